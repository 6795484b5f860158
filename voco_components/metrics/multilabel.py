"""Multi-label classification metrics: per-finding ROC AUC, with the findings an evaluation set cannot score named."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from ignite.exceptions import NotComputableError
from ignite.metrics import Metric
from monai.handlers import from_engine

from voco_components.metrics.classification import binary_auc

__all__ = [
    "multilabel_auc",
    "auc_summary",
    "MultiLabelAUC",
]

logger = logging.getLogger(__name__)
_PRED_AND_LABEL = from_engine(["pred", "label"])


def multilabel_auc(scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Per class, the ROC AUC of ``scores[:, c]`` for ``targets[:, c] == 1`` against 0 (rank-based, ties one half).

    Args:
        scores: (N, C) probabilities or logits (only their order matters).
        targets: (N, C) zeros and ones.

    Returns:
        (C,) AUCs; NaN for a class with no positive or no negative case.
    """
    scores, targets = np.asarray(scores, dtype=np.float64), np.asarray(targets)
    if scores.ndim != 2 or scores.shape != targets.shape:
        raise ValueError(f"scores and targets must both be (N, C), got {scores.shape} and {targets.shape}.")
    return np.array([binary_auc(scores[:, c], targets[:, c] == 1) for c in range(scores.shape[1])])


def auc_summary(scores: np.ndarray, targets: np.ndarray, class_names: Sequence[str]) -> dict[str, Any]:
    """Per-class AUCs and their mean over the classes the set can score, the others named with the reason.

    Returns:
        ``auc`` (C,) with NaN where not scored, ``positives`` and ``negatives`` (C,) counts, ``mean_auc`` over
        the scored classes (NaN when none is), ``num_scored`` and ``absent``: class name -> ``no positive case``
        or ``no negative case`` for every class left out of the mean.
    """
    targets = np.asarray(targets)
    if len(class_names) != targets.shape[1]:
        raise ValueError(f"{len(class_names)} class names for {targets.shape[1]} classes.")
    auc = multilabel_auc(scores, targets)
    positives, negatives = (targets == 1).sum(axis=0), (targets == 0).sum(axis=0)
    absent = {
        name: "no positive case" if positives[c] == 0 else "no negative case"
        for c, name in enumerate(class_names)
        if np.isnan(auc[c])
    }
    scored = ~np.isnan(auc)
    return {
        "auc": auc,
        "positives": positives,
        "negatives": negatives,
        "mean_auc": float(auc[scored].mean()) if scored.any() else float("nan"),
        "num_scored": int(scored.sum()),
        "absent": absent,
    }


def _stacked(values: Any) -> torch.Tensor:
    """A batch tensor (B, C), or MONAI's decollated list of (C,) tensors, as one (B, C) float64 tensor."""
    if isinstance(values, (list, tuple)):
        return torch.stack([torch.as_tensor(v).detach().flatten() for v in values]).cpu().double()
    return torch.as_tensor(values).detach().cpu().double().reshape(len(values), -1)


class MultiLabelAUC(Metric):
    """Mean over classes of the per-class ROC AUC of an evaluation (:func:`auc_summary`).

    A class without a positive (or without a negative) case in the evaluation set has no AUC: it is left out of
    the mean and named in a warning at every ``compute`` (and in ``summary['absent']``), never averaged in as
    NaN. ``compute`` returns NaN when no class can be scored.

    Args:
        class_names: the C class names, in output order.
        output_transform: engine output -> (scores, targets): (B, C) tensors or decollated lists of (C,).
        device: where the metric's state lives.
    """

    def __init__(
        self,
        class_names: Sequence[str],
        output_transform: Callable = _PRED_AND_LABEL,
        device: str | torch.device = "cpu",
    ) -> None:
        self.class_names = list(class_names)
        self.summary: dict[str, Any] = {}
        super().__init__(output_transform=output_transform, device=device)

    def reset(self) -> None:
        self._scores: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []

    def update(self, output: tuple[Any, Any]) -> None:
        scores, targets = (_stacked(v) for v in output)
        if scores.shape != targets.shape or scores.shape[1] != len(self.class_names):
            raise ValueError(
                f"scores {tuple(scores.shape)} and targets {tuple(targets.shape)} must both be (B, "
                f"{len(self.class_names)})."
            )
        self._scores.append(scores)
        self._targets.append(targets)

    def compute(self) -> float:
        if not self._scores:
            raise NotComputableError("MultiLabelAUC needs at least one batch before compute().")
        scores, targets = torch.cat(self._scores).numpy(), torch.cat(self._targets).round().numpy()
        self.summary = auc_summary(scores, targets, self.class_names)
        if self.summary["absent"]:
            listed = ", ".join(f"{name} ({why})" for name, why in self.summary["absent"].items())
            logger.warning(
                f"{len(self.summary['absent'])} of {len(self.class_names)} classes have no AUC on these "
                f"{len(scores)} cases and are left out of the mean AUC: {listed}"
            )
        return self.summary["mean_auc"]
