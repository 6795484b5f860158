"""Evaluation science: probes on frozen features, the organ probe's crops, label-budget splits, paired
statistics, result tables, and the evaluation of checkpoints."""

from .checkpoints import evaluate_checkpoints
from .label_splits import (
    BUDGET_UNITS,
    budget_key,
    patient_sample_splits,
    patient_splits,
    per_class_count,
    splits_hash,
    splits_text,
    volume_splits,
)
from .organ_probe import (
    PROBE_COUNTS,
    PROBE_SCORES,
    ProbeCrops,
    evenly_spaced,
    grid_starts,
    label_crops,
    organ_crops,
    probe_scores,
)
from .paired_stats import bootstrap_ci, holm, mean_sd, sign_flip_test
from .probes import (
    LogisticRegressionProbe,
    MultiLabelLogisticProbe,
    accuracy,
    balanced_accuracy,
    knn_multilabel_scores,
    knn_predict,
)
from .reports import json_number, write_class_table

__all__ = [
    "evaluate_checkpoints",
    "BUDGET_UNITS",
    "budget_key",
    "patient_sample_splits",
    "patient_splits",
    "per_class_count",
    "splits_hash",
    "splits_text",
    "volume_splits",
    "PROBE_COUNTS",
    "PROBE_SCORES",
    "ProbeCrops",
    "evenly_spaced",
    "grid_starts",
    "label_crops",
    "organ_crops",
    "probe_scores",
    "bootstrap_ci",
    "holm",
    "mean_sd",
    "sign_flip_test",
    "LogisticRegressionProbe",
    "MultiLabelLogisticProbe",
    "accuracy",
    "balanced_accuracy",
    "knn_multilabel_scores",
    "knn_predict",
    "json_number",
    "write_class_table",
]
