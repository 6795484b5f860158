"""Export a pretrained VoCo encoder as a plain ``SwinUNETR``-keyed state dict with a JSON sidecar.

Command line: ``python -m voco_components.export CHECKPOINT OUTPUT [--sidecar_info JSON]`` turns any
training checkpoint (``checkpoint_<step>.pt``) into ``OUTPUT`` (``models/model.pt``) plus
``OUTPUT`` with the suffix ``.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from voco_components.checkpoint import atomic_save, atomic_save_text, is_main_process

__all__ = ["encoder_state", "export_encoder", "EncoderExportHandler", "ModelExportHandler"]

_ENCODER_PREFIXES = ("student.encoder.", "module.student.encoder.", "encoder.", "module.encoder.")


def encoder_state(network_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder part of a training network's state dict, with the encoder's own key names.

    Takes the student of a teacher/student pair (``student.encoder.*``) or the encoder of a
    :class:`voco_components.networks.VoCoNet` (``encoder.*``), DDP ``module.`` prefixes included.
    """
    for prefix in _ENCODER_PREFIXES:
        found = {k[len(prefix) :]: v for k, v in network_state.items() if k.startswith(prefix)}
        if found:
            return found
    raise KeyError(f"no encoder weights found: expected keys starting with one of {_ENCODER_PREFIXES}.")


def export_encoder(state: Mapping[str, torch.Tensor], path: str | Path, info: Mapping[str, Any]) -> Path:
    """Write ``state`` (detached CPU tensors) to ``path`` atomically and ``info`` to ``path`` + ``.json``.

    The file loads with ``torch.load(path, weights_only=True)``. Returns the sidecar path.
    """
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    atomic_save(tensors, path)
    sidecar = path.with_suffix(".json")
    atomic_save_text(json.dumps(dict(info), indent=4, default=str) + "\n", sidecar)
    return sidecar


def _metrics_of(evaluator: Engine | None) -> dict[str, float]:
    if evaluator is None or evaluator.state is None:
        return {}
    return {k: float(v) for k, v in (evaluator.state.metrics or {}).items() if isinstance(v, (int, float))}


class EncoderExportHandler:
    """At the end of training, export ``encoder`` to ``path`` with a sidecar.

    The sidecar records ``info`` (variant, configuration, data), the number of steps trained and
    the last held-out metrics of ``evaluator``.

    Args:
        encoder: the encoder module (``SwinEncoder``/``UNetEncoder``) whose state is exported.
        path: target file, e.g. ``<bundle_root>/models/model.pt``.
        info: extra JSON-serialisable facts for the sidecar.
        evaluator: the validation engine, for its last metrics.
    """

    def __init__(
        self, encoder: nn.Module, path: str | Path, info: Mapping[str, Any], evaluator: Engine | None = None
    ) -> None:
        self.encoder = encoder
        self.path = Path(path)
        self.info = dict(info)
        self.evaluator = evaluator

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        info = {**self.info, "steps": engine.state.iteration, "metrics": _metrics_of(self.evaluator)}
        export_encoder(self.encoder.state_dict(), self.path, info)


class ModelExportHandler:
    """At the end of fine-tuning, export the deployable model to ``path`` (a flat state dict) with a sidecar.

    The exported weights are those of ``best_checkpoint`` (written by
    :class:`voco_components.checkpoint.BestMetricSaver`) when it exists, else the network as trained;
    the sidecar says which, with ``info``, the steps trained and the best record. This is the
    ``models/model.pt`` that ``inference.json``, ``monai.bundle.load`` and MONAI Label read.

    Args:
        network: the trained module (DDP unwrapped by the caller's ``network_def``).
        path: target file, e.g. ``<bundle_root>/models/model.pt``.
        best_checkpoint: ``<ckpt_dir>/checkpoint_best.pt`` (``{"network": state}``).
        info: extra JSON-serialisable facts for the sidecar.
    """

    def __init__(
        self, network: nn.Module, path: str | Path, best_checkpoint: str | Path, info: Mapping[str, Any] | None = None
    ) -> None:
        self.network = network
        self.path = Path(path)
        self.best_checkpoint = Path(best_checkpoint)
        self.info = dict(info or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        info: dict[str, Any] = {**self.info, "steps": engine.state.iteration}
        if self.best_checkpoint.is_file():
            state = torch.load(self.best_checkpoint, map_location="cpu", weights_only=True)["network"]
            record = self.best_checkpoint.with_suffix(".json")
            info["weights"] = "best"
            info["best"] = json.loads(record.read_text()) if record.is_file() else None
        else:
            state = self.network.state_dict()
            info["weights"] = "final"
        export_encoder(state, self.path, info)


def main(checkpoint: str, output: str, sidecar_info: str | Mapping[str, Any] = "{}") -> None:
    """Export the encoder of a training checkpoint (``{"network": state, ...}``) to ``output``.

    ``sidecar_info``: extra facts for the sidecar, as JSON text or (from the command line) a dict.
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    network = state.get("network", state)
    extra = json.loads(sidecar_info) if isinstance(sidecar_info, str) else dict(sidecar_info)
    info = {"source_checkpoint": str(checkpoint), **extra}
    if "trainer" in state:
        info["steps"] = int(state["trainer"].get("iteration", 0))
    export_encoder(encoder_state(network), output, info)
    print(f"exported the encoder of {checkpoint} to {output}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
