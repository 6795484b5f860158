"""Classification metrics: one-vs-rest AUC (rank-based, ties averaged) and the confusion matrix."""

from __future__ import annotations

import numpy as np

__all__ = [
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
    aucs = np.full(probabilities.shape[1], np.nan)
    for c in range(probabilities.shape[1]):
        positive = labels == c
        n_pos, n_neg = int(positive.sum()), int((~positive).sum())
        if n_pos and n_neg:
            rank_sum = _average_ranks(probabilities[:, c])[positive].sum()
            aucs[c] = (rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg)
    return aucs


def confusion_matrix(labels: np.ndarray, predictions: np.ndarray, num_classes: int) -> np.ndarray:
    """(num_classes, num_classes) counts: row = true class, column = predicted class."""
    labels, predictions = np.asarray(labels, dtype=np.int64), np.asarray(predictions, dtype=np.int64)
    return np.bincount(labels * num_classes + predictions, minlength=num_classes**2).reshape(num_classes, num_classes)
