"""Checkpoint handlers for Ignite engines: atomic step checkpoints, exact resume, and the best-metric checkpoint."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path
from typing import Any, Protocol

import torch
from ignite.engine import Engine, Events

from voco_components.engines.checkpoint_state import checkpoint_steps, latest_checkpoint
from voco_components.utils import atomic_save, atomic_save_text, is_main_process, unwrap_ddp

__all__ = [
    "StepCheckpointSaver",
    "ResumeHandler",
    "BestMetricSaver",
]


logger = logging.getLogger(__name__)


class _Stateful(Protocol):
    def state_dict(self) -> Any: ...

    def load_state_dict(self, state: Any) -> Any: ...


def _with_engine(objects: dict[str, Any], engine: Engine, engine_key: str | None) -> dict[str, Any]:
    """``objects`` plus the engine itself and, under AMP, its gradient scaler."""
    objects = dict(objects)
    if engine_key is not None:
        objects[engine_key] = engine
        scaler = getattr(engine, "scaler", None)
        if scaler is not None:
            objects[f"{engine_key}_scaler"] = scaler
    return objects


class StepCheckpointSaver:
    """Save the full training state every ``interval`` iterations and when training completes.

    Files are ``<save_dir>/checkpoint_<step>.pt``, each ``{name: obj.state_dict()}`` for ``save_dict``
    (network, optimizer, scheduler, RNG, ...) plus the engine it is attached to under ``engine_key``
    (and its AMP gradient scaler), written with :func:`atomic_save` by rank 0;
    the ``n_saved`` newest are kept. With ``save_initial``, the network's state before the first
    iteration also goes to ``<save_dir>/checkpoint_init.pt`` (``{"network": state}``), for comparing
    the trained model with its own initialisation.

    A run that starts at iteration 0 in a folder that already holds step checkpoints must not mix with
    that earlier run (rotate its files away, export its best network, or later resume from it). With
    ``existing`` ``"refuse"`` it stops with ``FileExistsError``; with ``"archive"`` every
    ``checkpoint_*`` file of the earlier run (step, initial and best checkpoints) first moves into
    ``<save_dir>/earlier_runs/<n>/`` (n = 1, 2, ...), which suits repeated trainings in one folder
    such as MONAI Label's.

    Args:
        save_dir: folder of the checkpoints.
        save_dict: objects with ``state_dict()``; DDP modules are unwrapped.
        interval: iterations between checkpoints.
        n_saved: how many step checkpoints to keep.
        save_initial: write ``checkpoint_init.pt`` when a run starts at iteration 0.
        network_key: the entry of ``save_dict`` that ``checkpoint_init.pt`` takes.
        engine_key: name under which the attached engine's state is saved; None to leave it out.
        existing: what a fresh run does with an earlier run's checkpoints: ``"refuse"`` or ``"archive"``.
    """

    EXISTING = ("refuse", "archive")

    def __init__(
        self,
        save_dir: str | Path,
        save_dict: dict[str, _Stateful],
        interval: int,
        n_saved: int = 2,
        save_initial: bool = True,
        network_key: str = "network",
        engine_key: str | None = "trainer",
        existing: str = "refuse",
    ) -> None:
        if interval < 1 or n_saved < 1:
            raise ValueError(f"interval and n_saved must be at least 1, got {interval} and {n_saved}.")
        if existing not in self.EXISTING:
            raise ValueError(f"existing must be one of {self.EXISTING}, got {existing!r}.")
        if save_initial and network_key not in save_dict:
            raise ValueError(f"save_initial needs a '{network_key}' entry in save_dict (got {sorted(save_dict)}).")
        self.save_dir = Path(save_dir)
        self.save_dict = save_dict
        self.interval = interval
        self.n_saved = n_saved
        self.save_initial = save_initial
        self.network_key = network_key
        self.engine_key = engine_key
        self.existing = existing

    def attach(self, engine: Engine) -> None:
        self.save_dict = _with_engine(self.save_dict, engine, self.engine_key)
        engine.add_event_handler(Events.STARTED, self._save_initial)
        engine.add_event_handler(Events.ITERATION_COMPLETED(every=self.interval), self.save)
        engine.add_event_handler(Events.COMPLETED, self.save)

    def _save_initial(self, engine: Engine) -> None:
        if engine.state.iteration == 0 and checkpoint_steps(self.save_dir):
            if self.existing == "refuse":
                raise FileExistsError(
                    f"{self.save_dir} holds checkpoints of an earlier run (steps {checkpoint_steps(self.save_dir)}): "
                    "continue it with resume=true, give this run another output folder, or set "
                    "existing_checkpoints to 'archive'."
                )
            if is_main_process():
                self._archive_earlier_run()
        if self.save_initial and engine.state.iteration == 0 and is_main_process():
            state = unwrap_ddp(self.save_dict[self.network_key]).state_dict()
            atomic_save({self.network_key: state}, self.save_dir / "checkpoint_init.pt")

    def _archive_earlier_run(self) -> Path:
        """Move the ``checkpoint_*`` files of ``save_dir`` into the next free ``earlier_runs/<n>``."""
        archive_root = self.save_dir / "earlier_runs"
        taken = [int(p.name) for p in archive_root.glob("*") if p.name.isdigit()] if archive_root.is_dir() else []
        archive = archive_root / str(max(taken, default=0) + 1)
        archive.mkdir(parents=True)
        for path in sorted(self.save_dir.glob("checkpoint_*")):
            if path.is_file():
                path.rename(archive / path.name)
        logger.info(f"moved the checkpoints of the earlier run in {self.save_dir} to {archive}")
        return archive

    def save(self, engine: Engine) -> None:
        if not is_main_process():
            return
        step = engine.state.iteration
        state = {name: unwrap_ddp(obj).state_dict() for name, obj in self.save_dict.items()}
        atomic_save(state, self.save_dir / f"checkpoint_{step}.pt")
        for old in checkpoint_steps(self.save_dir)[: -self.n_saved]:
            (self.save_dir / f"checkpoint_{old}.pt").unlink(missing_ok=True)
        logger.info(f"saved checkpoint at step {step} to {self.save_dir}")


class ResumeHandler:
    """Resume a killed run from the newest ``checkpoint_<step>.pt`` when the engine starts.

    Restores every object of ``load_dict`` and the attached engine (saved under ``engine_key``: its
    iteration counter, so training continues at the next step), then tells ``sampler`` (if given)
    where the data stream continues.
    Attach it before the other handlers. With ``enabled`` False, or no checkpoint found, it only
    positions the sampler at the engine's current iteration.

    Args:
        save_dir: folder of the checkpoints.
        load_dict: the objects to restore, by the names used when saving.
        enabled: resume at all (the bundles' ``resume`` switch).
        sampler: an object with ``set_start_step(step)``, e.g.
            :class:`voco_components.data.dataset.ResumableDistributedSampler`.
        map_location: passed to ``torch.load``.
        engine_key: name under which the engine's state was saved; None to leave it out.
    """

    def __init__(
        self,
        save_dir: str | Path,
        load_dict: dict[str, _Stateful],
        enabled: bool = True,
        sampler: Any = None,
        map_location: str | torch.device = "cpu",
        engine_key: str | None = "trainer",
    ) -> None:
        self.save_dir = Path(save_dir)
        self.load_dict = load_dict
        self.enabled = enabled
        self.sampler = sampler
        self.map_location = map_location
        self.engine_key = engine_key

    def attach(self, engine: Engine) -> None:
        self.load_dict = _with_engine(self.load_dict, engine, self.engine_key)
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        path = latest_checkpoint(self.save_dir) if self.enabled else None
        if self.enabled and path is None:
            logger.warning(f"resume requested but {self.save_dir} holds no checkpoint_<step>.pt: starting afresh.")
        if path is not None:
            state = torch.load(path, map_location=self.map_location, weights_only=True)
            missing = sorted(set(self.load_dict) - set(state))
            if missing:
                raise KeyError(f"{path}: checkpoint lacks {missing} (has {sorted(state)}).")
            limits = {k: getattr(engine.state, k, None) for k in ("max_epochs", "max_iters")}
            for name, obj in self.load_dict.items():
                unwrap_ddp(obj).load_state_dict(state[name])
            for key, value in limits.items():  # this run's limits, so a resumed run can be extended
                if value is not None:
                    setattr(engine.state, key, value)
            logger.info(f"resumed from {path} at step {engine.state.iteration}")
        if self.sampler is not None:
            self.sampler.set_start_step(engine.state.iteration)


class BestMetricSaver:
    """Keep the network with the best held-out key metric: attach to the evaluator.

    After each evaluation whose ``metric_name`` beats the best so far, ``{"network": state}`` goes
    atomically to ``<save_dir>/checkpoint_best.pt`` and the score with the evaluation epoch to
    ``checkpoint_best.json``. An existing ``checkpoint_best.json`` (from a resumed run) sets the
    score to beat.

    Args:
        save_dir: folder of the checkpoint.
        network: the module to save (DDP unwrapped).
        metric_name: key of ``evaluator.state.metrics``.
        mode: ``max`` (higher is better, e.g. a top-1) or ``min`` (lower is better, e.g. a reconstruction error).
    """

    def __init__(self, save_dir: str | Path, network: torch.nn.Module, metric_name: str, mode: str = "max") -> None:
        if mode not in ("max", "min"):
            raise ValueError(f"mode must be 'max' or 'min', got {mode!r}.")
        self.save_dir = Path(save_dir)
        self.network = network
        self.metric_name = metric_name
        self.sign = 1.0 if mode == "max" else -1.0

    def _best_so_far(self) -> float:
        """The best score so far, signed so that higher is better."""
        record = self.save_dir / "checkpoint_best.json"
        return self.sign * float(json.loads(record.read_text())["score"]) if record.is_file() else -math.inf

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        score = float(engine.state.metrics[self.metric_name])
        if not math.isfinite(score):
            logger.warning(f"{self.metric_name} is {score}: not a candidate for the best checkpoint.")
            return
        if self.sign * score <= self._best_so_far():
            return
        atomic_save({"network": unwrap_ddp(self.network).state_dict()}, self.save_dir / "checkpoint_best.pt")
        record = {"metric": self.metric_name, "score": score, "epoch": engine.state.epoch}
        atomic_save_text(json.dumps(record, indent=4) + "\n", self.save_dir / "checkpoint_best.json")
