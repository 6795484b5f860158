"""Metrics: VoCo position prediction, per-class Dice, one-vs-rest AUC and the confusion matrix."""

from .classification import confusion_matrix, one_vs_rest_auc
from .dice import PerClassDice
from .position import (
    BaseEffectiveRank,
    ChanceTop1,
    PositionAUC,
    PositionMAE,
    PositionTop1Accuracy,
    RandomCropCount,
    chance_top1,
    effective_rank,
    position_auc,
    top1_hits,
)

__all__ = [
    "confusion_matrix",
    "one_vs_rest_auc",
    "PerClassDice",
    "BaseEffectiveRank",
    "ChanceTop1",
    "PositionAUC",
    "PositionMAE",
    "PositionTop1Accuracy",
    "RandomCropCount",
    "chance_top1",
    "effective_rank",
    "position_auc",
    "top1_hits",
]
