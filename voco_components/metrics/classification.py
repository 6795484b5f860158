"""Classification metrics: one-vs-rest AUC (rank-based, ties averaged) and the confusion matrix."""

from __future__ import annotations

import numpy as np

__all__ = [
    "binary_auc",
    "one_vs_rest_auc",
    "confusion_matrix",
]


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks of ``values`` (N,), ties sharing their mean rank."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    starts = np.r_[0, np.flatnonzero(np.diff(ordered)) + 1]
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values), dtype=np.float64)
    ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return ranks


def one_vs_rest_auc(probabilities: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Area under the ROC curve of each class against the others (Mann-Whitney U, ties count one half).

    Args:
        probabilities: (N, C) class scores.
        labels: (N,) class indices.

    Returns:
        (C,) AUCs; NaN for a class that has no positive or no negative volume.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    labels = np.asarray(labels)
    return np.array([binary_auc(probabilities[:, c], labels == c) for c in range(probabilities.shape[1])])


def binary_auc(scores: np.ndarray, positive: np.ndarray) -> float:
    """Area under the ROC curve of ``scores`` (N,) for the cases where ``positive`` (N,) is true against the others
    (Mann-Whitney U from average ranks, ties count one half); NaN without a positive or without a negative case."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not (n_pos and n_neg):
        return float("nan")
    rank_sum = _average_ranks(scores)[positive].sum()
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts: row = true class, column = predicted class."""
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)
