"""An online organ probe on frozen encoder features, re-fitted at every validation of the pretraining."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from ignite.engine import Engine, Events
from torch import nn

from voco_components.data import load_datalists
from voco_components.networks import probe_features
from voco_components.probes import LogisticRegressionProbe, accuracy, balanced_accuracy, knn_predict

__all__ = [
    "PROBE_SCORES",
    "PROBE_COUNTS",
    "ProbeCrops",
    "grid_starts",
    "label_crops",
    "organ_crops",
    "evenly_spaced",
    "probe_scores",
    "OnlineProbeHandler",
]

logger = logging.getLogger(__name__)

PROBE_SCORES = (
    "probe_knn_accuracy",
    "probe_linear_accuracy",
    "probe_knn_balanced_accuracy",
    "probe_linear_balanced_accuracy",
)
"""The probe's scores, in ``evaluator.state.metrics`` with the handler's prefix (``val_``)."""
PROBE_COUNTS = ("probe_num_fit_crops", "probe_num_score_crops")
"""How many crops fitted and scored the probe."""


@dataclass(frozen=True)
class ProbeCrops:
    """Crops of one split: ``images`` (N, C, *roi_size) and their organ ids ``labels`` (N,)."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def grid_starts(size: int, roi: int, stride: int) -> list[int]:
    """Start indices of windows of ``roi`` voxels every ``stride`` voxels along an axis of ``size`` >= ``roi``."""
    return list(range(0, size - roi + 1, stride))


def label_crops(labels: torch.Tensor, min_organ_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Majority organ of each label crop, and which crops hold enough organ voxels to be kept.

    Args:
        labels: (N, *roi) integer organ maps, 0 = no organ.
        min_organ_fraction: a crop is kept when at least this fraction of its voxels are organ (non-zero).

    Returns:
        (N,) the most frequent non-zero id of each crop (ties go to the lower id; 0 when the crop has no organ),
        and (N,) a bool mask of the crops kept.
    """
    flat = labels.reshape(labels.shape[0], -1).long()
    num_ids = int(flat.max()) + 1
    rows = torch.arange(flat.shape[0]).unsqueeze(1) * num_ids
    counts = torch.bincount((flat + rows).flatten(), minlength=flat.shape[0] * num_ids).reshape(-1, num_ids)
    organ_voxels = counts[:, 1:].sum(dim=1)
    majority = torch.where(organ_voxels > 0, counts[:, 1:].argmax(dim=1) + 1, torch.zeros_like(organ_voxels))
    keep = organ_voxels >= min_organ_fraction * flat.shape[1]
    return majority, keep & (organ_voxels > 0)


def organ_crops(
    image: torch.Tensor,
    label: torch.Tensor,
    roi_size: Sequence[int],
    stride: Sequence[int],
    min_organ_fraction: float,
) -> ProbeCrops:
    """Crops of ``roi_size`` on a regular grid of ``stride``, labelled by their majority organ.

    The volume is first zero-padded at the end of any axis shorter than ``roi_size`` (0 is air after the CT
    window, and no organ in the label). Crops with less than ``min_organ_fraction`` organ voxels are dropped.

    Args:
        image: (C, X, Y, Z) preprocessed image.
        label: (1, X, Y, Z) organ ids, 0 = no organ.
        roi_size: crop size (3,).
        stride: grid step (3,).
        min_organ_fraction: see :func:`label_crops`.

    Returns:
        the kept crops (N, C, *roi_size) in grid order (x slowest) and their organ ids (N,).
    """
    roi, steps = [int(r) for r in roi_size], [int(s) for s in stride]
    if len(roi) != 3 or len(steps) != 3 or min(roi + steps) < 1:
        raise ValueError(f"roi_size and stride must be 3 positive sizes, got {roi_size} and {stride}.")
    if image.ndim != 4 or tuple(label.shape) != (1, *image.shape[1:]):
        raise ValueError(
            f"need an image (C, X, Y, Z) and a label (1, X, Y, Z), got {tuple(image.shape)}, {tuple(label.shape)}."
        )
    padding = [p for r, s in zip(reversed(roi), reversed(image.shape[1:]), strict=True) for p in (0, max(r - s, 0))]
    image, label = F.pad(image[None], padding, mode="replicate")[0], F.pad(label, padding)
    starts = [grid_starts(s, r, t) for s, r, t in zip(image.shape[1:], roi, steps, strict=True)]
    boxes = [(x, y, z) for x in starts[0] for y in starts[1] for z in starts[2]]
    label_stack = torch.stack([label[0, x : x + roi[0], y : y + roi[1], z : z + roi[2]] for x, y, z in boxes])
    majority, keep = label_crops(label_stack, min_organ_fraction)
    kept = [box for box, k in zip(boxes, keep.tolist(), strict=True) if k]
    images = [image[:, x : x + roi[0], y : y + roi[1], z : z + roi[2]] for x, y, z in kept]
    empty = image.new_zeros((0, image.shape[0], *roi))
    return ProbeCrops(images=torch.stack(images) if images else empty, labels=majority[keep])


def evenly_spaced(crops: ProbeCrops, max_crops: int) -> ProbeCrops:
    """At most ``max_crops`` of ``crops``, evenly spaced in grid order (all of them when there are fewer)."""
    if len(crops) <= max_crops:
        return crops
    index = torch.linspace(0, len(crops) - 1, max_crops).round().long()
    return ProbeCrops(images=crops.images[index], labels=crops.labels[index])


def probe_scores(
    fit_features: torch.Tensor,
    fit_labels: torch.Tensor,
    score_features: torch.Tensor,
    score_labels: torch.Tensor,
    k: int = 5,
    weight_decay: float = 1e-2,
) -> dict[str, float]:
    """Fit a cosine kNN and a logistic regression on (N, C) fit features and score them on (M, C) features.

    The classes are the organ ids present among the (N,) ``fit_labels``; a scored crop whose organ never occurs
    in the fit set cannot be predicted and counts as an error.

    Returns:
        :data:`PROBE_SCORES` (accuracy and balanced accuracy over the (M,) ``score_labels``) and
        :data:`PROBE_COUNTS`.
    """
    classes = fit_labels.unique()  # sorted organ ids
    fit_index = torch.searchsorted(classes, fit_labels)
    knn = classes[knn_predict(fit_features, fit_index, score_features, len(classes), k=k)]
    linear_probe = LogisticRegressionProbe(len(classes), weight_decay=weight_decay).fit(fit_features, fit_index)
    linear = classes[linear_probe.predict(score_features)]
    return {
        "probe_knn_accuracy": accuracy(knn, score_labels),
        "probe_linear_accuracy": accuracy(linear, score_labels),
        "probe_knn_balanced_accuracy": balanced_accuracy(knn, score_labels),
        "probe_linear_balanced_accuracy": balanced_accuracy(linear, score_labels),
        "probe_num_fit_crops": float(fit_labels.numel()),
        "probe_num_score_crops": float(score_labels.numel()),
    }


def _is_distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


class OnlineProbeHandler:
    """Evaluator handler: at every validation, probe the frozen encoder's features for organ identity.

    A small labelled probe set (a decathlon datalist with ``image`` and an organ map ``label``: its
    ``training`` entries fit the probe, its ``validation`` entries score it) is preprocessed with
    ``preprocessing`` and cut into crops by :func:`organ_crops` once, at the first validation, and kept in
    memory. At every validation the encoder (in ``eval()`` mode, without gradients) maps each crop to its
    pooled multi-scale features (:func:`voco_components.networks.probe_features`); a cosine kNN and a
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
            :func:`voco_components.pipelines.ct_preprocessing` with ``label_keys=["label"]``).
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
