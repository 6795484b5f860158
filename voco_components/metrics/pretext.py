"""Held-out pretext metrics of the baseline methods for a ``SupervisedEvaluator``: SimMIM's masked-voxel L1, the
rotation accuracy of Swin UNETR's self-supervised heads, and the view-matching top-1 of the two-view methods."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from monai.utils import CommonKeys
from torch.utils.data import default_collate

from voco_components.losses.simmim import masked_l1
from voco_components.transforms.masking import expand_mask

__all__ = ["prediction_and_target", "view_matching_top1", "MaskedL1", "RotationAccuracy", "ViewMatchingTop1"]


def prediction_and_target(output: Any) -> tuple[Any, Any]:
    """Evaluator output -> (prediction, target), batched: one dict (``decollate=False``) as it is, or MONAI's
    decollated list of per-row dicts collated back (tensors, and dicts of tensors, stacked in row order)."""
    if isinstance(output, dict):
        return output[CommonKeys.PRED], output[CommonKeys.LABEL]
    rows = [{"pred": o[CommonKeys.PRED], "label": o[CommonKeys.LABEL]} for o in output]
    batch = default_collate(rows)
    return batch["pred"], batch["label"]


def view_matching_top1(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """(M, D) embeddings of the first and second views of M crops -> (2M,) bool: for each view, whether the most
    cosine-similar view of the other kind is its own partner (first -> second for the M first rows, then
    second -> first)."""
    similarity = F.normalize(first.double(), dim=1) @ F.normalize(second.double(), dim=1).T
    own = torch.arange(first.shape[0], device=first.device)
    return torch.cat((similarity.argmax(dim=1) == own, similarity.argmax(dim=0) == own))


class _MeanMetric(Metric):
    """Accumulates a sum and a count over evaluator iterations."""

    def __init__(self, output_transform: Callable = prediction_and_target, device: str | torch.device = "cpu") -> None:
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._sum = 0.0
        self._count = 0.0

    def compute(self) -> float:
        if self._count == 0:
            raise NotComputableError(f"{type(self).__name__} needs at least one batch before compute().")
        return self._sum / self._count


class MaskedL1(_MeanMetric):
    """Mean |reconstruction - input| over the masked voxels of every held-out crop (SimMIM's loss, lower is better).

    Output: reconstruction (N, C, *roi); target ``{"image": (N, C, *roi), "mask": bool (N, *units)}``.
    """

    def update(self, output: tuple[torch.Tensor, dict[str, torch.Tensor]]) -> None:
        prediction, target = output
        mask = expand_mask(target["mask"], prediction.shape[2:])
        count = float(mask.sum()) * prediction.shape[1]
        self._sum += float(masked_l1(prediction.double(), target["image"].double(), mask)) * count
        self._count += count


class RotationAccuracy(_MeanMetric):
    """Fraction of held-out views whose 4-way rotation is predicted right.

    Output: ``{"rotation": (N, 4) logits, ...}``; target ``{"rotation": (N,) quarter turns, ...}``.
    """

    def update(self, output: tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]) -> None:
        prediction, target = output
        hits = prediction["rotation"].argmax(dim=1) == target["rotation"]
        self._sum += float(hits.sum())
        self._count += hits.numel()


class ViewMatchingTop1(Metric):
    """Over all held-out view pairs of a validation, the fraction of views whose nearest view of the other kind (by
    cosine) is their own partner (:func:`view_matching_top1`); chance is 1 / pairs.

    Output: embeddings (2M, D), or a dict with ``"embedding"`` (2M, D): the M first views, then the M second views
    of every batch (:class:`voco_components.engines.ssl_workflow.TwoViewPrepareBatch`). All embeddings of the
    validation are kept and matched together at :meth:`compute`.
    """

    def __init__(self, output_transform: Callable = prediction_and_target, device: str | torch.device = "cpu") -> None:
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._first: list[torch.Tensor] = []
        self._second: list[torch.Tensor] = []

    def update(self, output: tuple[Any, Any]) -> None:
        prediction = output[0]["embedding"] if isinstance(output[0], dict) else output[0]
        if prediction.ndim != 2 or prediction.shape[0] % 2:
            raise ValueError(f"view matching needs (2M, D) embeddings, got {tuple(prediction.shape)}.")
        half = prediction.shape[0] // 2
        self._first.append(prediction[:half].detach().float().cpu())
        self._second.append(prediction[half:].detach().float().cpu())

    def compute(self) -> float:
        if not self._first:
            raise NotComputableError("ViewMatchingTop1 needs at least one batch before compute().")
        return float(view_matching_top1(torch.cat(self._first), torch.cat(self._second)).double().mean())
