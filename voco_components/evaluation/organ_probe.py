"""The organ probe's data: labelled crops cut from CTs with organ maps, and the probe scores on their features."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from voco_components.evaluation.probes import LogisticRegressionProbe, accuracy, balanced_accuracy, knn_predict

__all__ = [
    "PROBE_SCORES",
    "PROBE_COUNTS",
    "ProbeCrops",
    "grid_starts",
    "label_crops",
    "organ_crops",
    "evenly_spaced",
    "probe_scores",
]


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
