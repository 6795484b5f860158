"""An online organ probe on frozen encoder features, re-fitted at every validation of the pretraining."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events
from torch import nn

from voco_components.data.datalists import load_datalists
from voco_components.evaluation.organ_probe import ProbeCrops, evenly_spaced, organ_crops, probe_scores
from voco_components.networks.encoders import probe_features

__all__ = [
    "OnlineProbeHandler",
]


logger = logging.getLogger(__name__)


def _is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class OnlineProbeHandler:
    """Evaluator handler: at every validation, probe the frozen encoder's features for organ identity.

    A small labelled probe set (a decathlon datalist with ``image`` and an organ map ``label``: its
    ``training`` entries fit the probe, its ``validation`` entries score it) is preprocessed with
    ``preprocessing`` and cut into crops by :func:`organ_crops` once, at the first validation, and kept in
    memory. At every validation the encoder (in ``eval()`` mode, without gradients) maps each crop to its
    pooled multi-scale features (:func:`voco_components.networks.encoders.probe_features`); a cosine kNN and a
    logistic regression are fitted on the fit crops from scratch and scored on the score crops
    (:func:`probe_scores`). The results go to ``engine.state.metrics`` as ``<prefix><name>``, so attach the
    handler before the stats, TensorBoard and best-checkpoint handlers. Each module's train/eval mode is
    restored afterwards, and nothing draws random numbers, so probing leaves training unchanged.

    Under DDP, rank 0 probes and broadcasts its metrics, so every rank holds the same values (the other
    ranks wait); the encoder must be the plain module (not the DDP wrapper), the one that is exported.

    Args:
        encoder: the encoder that is exported, e.g. the config's ``network_def`` (the student's encoder in
            the official variant).
        datalist: the probe datalist JSON (or several); None disables the handler.
        dataset_dir: folder that the datalist's relative paths resolve against.
        preprocessing: dict transform producing a (C, X, Y, Z) ``image`` and (1, X, Y, Z) ``label`` (e.g.
            :func:`voco_components.transforms.pipelines.ct_preprocessing` with ``label_keys=["label"]``).
        roi_size: crop size, the pretraining's ``roi_size``.
        stride: grid step of the crops; ``roi_size`` (non-overlapping crops) when None.
        min_organ_fraction: smallest fraction of organ voxels in a kept crop.
        max_crops: most crops per split (evenly spaced over the grid).
        k: neighbours of the kNN.
        weight_decay: L2 penalty of the logistic regression.
        batch_size: crops per encoder forward pass.
        prefix: prefix of the metric names.
    """

    def __init__(
        self,
        encoder: nn.Module,
        datalist: str | Path | Sequence[str | Path] | None,
        dataset_dir: str | Path,
        preprocessing: Callable[[Mapping[str, Any]], Mapping[str, Any]],
        roi_size: Sequence[int],
        stride: Sequence[int] | None = None,
        min_organ_fraction: float = 0.05,
        max_crops: int = 128,
        k: int = 5,
        weight_decay: float = 1e-2,
        batch_size: int = 8,
        prefix: str = "val_",
    ) -> None:
        if not 0.0 < min_organ_fraction <= 1.0 or max_crops < 1 or k < 1 or batch_size < 1:
            raise ValueError(
                f"need 0 < min_organ_fraction <= 1 and max_crops, k, batch_size >= 1, got {min_organ_fraction}, "
                f"{max_crops}, {k}, {batch_size}."
            )
        self.encoder = encoder
        self.datalist = datalist
        self.dataset_dir = dataset_dir
        self.preprocessing = preprocessing
        self.roi_size = [int(r) for r in roi_size]
        self.stride = self.roi_size if stride is None else [int(s) for s in stride]
        self.min_organ_fraction = float(min_organ_fraction)
        self.max_crops = int(max_crops)
        self.k = int(k)
        self.weight_decay = float(weight_decay)
        self.batch_size = int(batch_size)
        self.prefix = prefix
        self._splits: dict[str, ProbeCrops] | None = None

    @property
    def enabled(self) -> bool:
        return self.datalist is not None

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self)
        else:
            logger.info("organ probe off: no probe datalist (the probe needs 3D volumes with organ maps).")

    def split_crops(self, split: str) -> ProbeCrops:
        """The crops of every volume of the datalist's ``split`` list, capped at ``max_crops``."""
        entries = load_datalists(self.datalist, self.dataset_dir, split)
        if not entries:
            raise ValueError(f"{self.datalist}: the probe needs at least one '{split}' volume.")
        parts = []
        for entry in entries:
            if "label" not in entry:
                raise ValueError(f"{self.datalist}: the probe entry {entry['image']} has no 'label' (organ map).")
            data = self.preprocessing(entry)
            image = torch.as_tensor(data["image"]).as_subclass(torch.Tensor).float()
            label = torch.as_tensor(data["label"]).as_subclass(torch.Tensor).round().long()
            parts.append(organ_crops(image, label, self.roi_size, self.stride, self.min_organ_fraction))
        crops = ProbeCrops(torch.cat([p.images for p in parts]), torch.cat([p.labels for p in parts]))
        if len(crops) == 0:
            raise ValueError(
                f"{self.datalist}: no '{split}' crop of {self.roi_size} holds {self.min_organ_fraction:.0%} organ "
                "voxels; lower probe_min_organ_fraction or check the labels."
            )
        return evenly_spaced(crops, self.max_crops)

    def crops(self) -> dict[str, ProbeCrops]:
        """The fit (``training``) and score (``validation``) crops, prepared at the first call."""
        if self._splits is None:
            self._splits = {split: self.split_crops(split) for split in ("training", "validation")}
            counts = {s: len(c) for s, c in self._splits.items()}
            logger.info(f"organ probe: {counts['training']} fit crops, {counts['validation']} score crops")
        return self._splits

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, *roi_size) crops -> (N, F) pooled multi-scale features of the encoder in eval mode, on the CPU."""
        modes = {module: module.training for module in self.encoder.modules()}
        device = next(self.encoder.parameters()).device
        self.encoder.eval()
        try:
            batches = images.split(self.batch_size)
            return torch.cat([probe_features(self.encoder, b.to(device)).float().cpu() for b in batches])
        finally:
            for module, mode in modes.items():
                module.training = mode

    def compute(self) -> dict[str, float]:
        """Fit and score the probes on the current encoder: :data:`PROBE_SCORES` and :data:`PROBE_COUNTS`."""
        splits = self.crops()
        fit, score = splits["training"], splits["validation"]
        return probe_scores(
            self.features(fit.images), fit.labels, self.features(score.images), score.labels, self.k, self.weight_decay
        )

    def __call__(self, engine: Engine) -> None:
        if not _is_distributed():
            results = self.compute()
        else:
            message = [self.compute() if torch.distributed.get_rank() == 0 else None]
            torch.distributed.broadcast_object_list(message, src=0)
            results = message[0]
        engine.state.metrics.update({self.prefix + name: value for name, value in results.items()})
