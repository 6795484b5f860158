"""Handlers that export the network at the end of a run: the VoCo encoder, or a downstream bundle's model."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from voco_components.engines.export import export_encoder
from voco_components.utils import is_main_process

__all__ = [
    "EncoderExportHandler",
    "ModelExportHandler",
]


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
    :class:`voco_components.handlers.checkpoint.BestMetricSaver`) when it exists, else the network as trained;
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
