"""Position-prediction metrics for a ``SupervisedEvaluator`` running a VoCo network on VoCo crops."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from monai.utils import CommonKeys

from voco_components.engines.workflow import split_crop_features
from voco_components.losses.voco import position_logits

__all__ = [
    "top1_hits",
    "position_auc",
    "chance_top1",
    "effective_rank",
    "PositionTop1Accuracy",
    "PositionMAE",
    "PositionAUC",
    "BaseEffectiveRank",
    "ChanceTop1",
    "RandomCropCount",
]


def _pred_and_label(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """Evaluator output -> (features (B*(n+k), C), labels (B, k, n)).

    Accepts one dict (``decollate=False``) or MONAI's decollated list of dicts, in which the B*(n+k)
    feature rows and the B label blocks are split item by item and the shorter list is padded with None.
    """
    if isinstance(output, dict):
        return output[CommonKeys.PRED], output[CommonKeys.LABEL]
    if isinstance(output, (list, tuple)) and output and isinstance(output[0], dict):
        preds = [o[CommonKeys.PRED] for o in output if o.get(CommonKeys.PRED) is not None]
        labels = [o[CommonKeys.LABEL] for o in output if o.get(CommonKeys.LABEL) is not None]
        return torch.stack(preds), torch.stack(labels)
    return output[0], output[1]


def top1_hits(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, k, n) -> bool (B, k): the base with the highest logit has the largest overlap (ties in y all count)."""
    chosen = labels.gather(-1, logits.argmax(dim=-1, keepdim=True)).squeeze(-1)
    return chosen >= labels.amax(dim=-1)


def position_auc(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """(B, k, n) -> (B, k): per random crop, the AUC of its logits for the bases it overlaps against the others.

    The probability that a base with y > 0 has a higher logit than a base with y = 0 (ties count one half):
    0.5 is no discrimination, 1 ranks every overlapping base above every other. It depends only on the
    order of the logits, so a monotone recalibration of the cosines leaves it unchanged. A crop that
    overlaps every base, or none, has no AUC and gives NaN.
    """
    overlaps = labels > 0
    # (B, k, n, n): entry [i, j] compares base i (overlapped) with base j (not overlapped)
    difference = logits.unsqueeze(-1) - logits.unsqueeze(-2)
    wins = (difference > 0).to(torch.float64) + 0.5 * (difference == 0).to(torch.float64)
    pairs = (overlaps.unsqueeze(-1) & ~overlaps.unsqueeze(-2)).to(torch.float64)
    count = pairs.sum(dim=(-2, -1))
    return (wins * pairs).sum(dim=(-2, -1)) / torch.where(count > 0, count, torch.nan)


def chance_top1(labels: torch.Tensor) -> torch.Tensor:
    """Expected top-1 accuracy of a uniformly random choice of base: mean of (#bases with the largest y) / n."""
    return _tie_fraction(labels).mean()


def _tie_fraction(labels: torch.Tensor) -> torch.Tensor:
    """(B, k, n) -> (B, k): fraction of the n bases that share the largest label."""
    ties = (labels == labels.amax(dim=-1, keepdim=True)).sum(dim=-1).to(torch.float64)
    return ties / labels.shape[-1]


def effective_rank(features: torch.Tensor) -> torch.Tensor:
    """exp(entropy of the normalised singular values) of each (n, C) matrix in (B, n, C) -> (B,), in [1, n].

    A collapsed set of base features (all alike) has effective rank near 1; n orthogonal ones have n.
    """
    singular = torch.linalg.svdvals(features.to(torch.float64))
    p = singular / singular.sum(dim=-1, keepdim=True).clamp_min(1e-12)
    entropy = -(p * torch.log(p.clamp_min(1e-12))).sum(dim=-1)
    return entropy.exp()


class _CropMetric(Metric):
    """Accumulates a sum and a count over evaluator iterations."""

    def __init__(self, output_transform: Callable = _pred_and_label, device: str | torch.device = "cpu") -> None:
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._sum = 0.0
        self._count = 0

    def _add(self, values: torch.Tensor) -> None:
        self._sum += float(values.detach().to(torch.float64).sum())
        self._count += values.numel()

    def compute(self) -> float:
        if self._count == 0:
            raise NotComputableError(f"{type(self).__name__} needs at least one batch before compute().")
        return self._sum / self._count


class PositionTop1Accuracy(_CropMetric):
    """Fraction of random crops whose highest logit points at a base with the largest overlap."""

    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        features, labels = output
        random, base = split_crop_features(features, labels)
        self._add(top1_hits(position_logits(random, base), labels).float())


class PositionMAE(_CropMetric):
    """Mean |l - y| over all random crops and bases."""

    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        features, labels = output
        random, base = split_crop_features(features, labels)
        self._add((position_logits(random, base) - labels).abs())


class PositionAUC(_CropMetric):
    """Mean over random crops of :func:`position_auc`; crops that overlap every base or none are left out.

    NaN when every crop seen was left out (on a grid of two cells a crop often overlaps both).
    """

    def reset(self) -> None:
        super().reset()
        self._updates = 0

    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        features, labels = output
        random, base = split_crop_features(features, labels)
        auc = position_auc(position_logits(random, base), labels)
        self._add(auc[~auc.isnan()])
        self._updates += 1

    def compute(self) -> float:
        if self._updates and not self._count:
            return float("nan")
        return super().compute()


class BaseEffectiveRank(_CropMetric):
    """Mean effective rank of each volume's n base features: near 1 signals collapse, n is the maximum."""

    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        features, labels = output
        _, base = split_crop_features(features, labels)
        self._add(effective_rank(base))


class ChanceTop1(_CropMetric):
    """Top-1 accuracy of a uniformly random choice of base on the same crops (see :func:`chance_top1`)."""

    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        _, labels = output
        self._add(_tie_fraction(labels))


class RandomCropCount(Metric):
    """How many random crops an evaluation saw."""

    def __init__(self, output_transform: Callable = _pred_and_label, device: str | torch.device = "cpu") -> None:
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._count = 0

    def update(self, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        self._count += output[1].shape[0] * output[1].shape[1]

    def compute(self) -> int:
        return self._count
