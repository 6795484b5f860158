"""Metrics: VoCo position prediction, the baseline methods' pretext metrics, per-class Dice, one-vs-rest and
multi-label AUC, and the confusion matrix."""

from .classification import binary_auc, confusion_matrix, one_vs_rest_auc
from .dice import PerClassDice
from .multilabel import MultiLabelAUC, auc_summary, multilabel_auc
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
from .pretext import MaskedL1, RotationAccuracy, ViewMatchingTop1, prediction_and_target, view_matching_top1

__all__ = [
    "binary_auc",
    "confusion_matrix",
    "one_vs_rest_auc",
    "PerClassDice",
    "MultiLabelAUC",
    "auc_summary",
    "multilabel_auc",
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
    "MaskedL1",
    "RotationAccuracy",
    "ViewMatchingTop1",
    "prediction_and_target",
    "view_matching_top1",
]
