"""Probes on frozen features: cosine k-nearest neighbours and logistic regression, single-label (a class per
example) and multi-label (a 0/1 target per class), and balanced accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "knn_predict",
    "knn_multilabel_scores",
    "LogisticRegressionProbe",
    "MultiLabelLogisticProbe",
    "accuracy",
    "balanced_accuracy",
]


def _check_fit_inputs(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"features must be (N, C) and labels (N,), got {tuple(features.shape)}, {tuple(labels.shape)}."
        )
    if features.shape[0] == 0:
        raise ValueError("a probe needs at least one labelled example.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}].")


def _nearest(train_features: torch.Tensor, query: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``k`` (at most N) nearest of the (N, C) training examples to each (M, C) query by cosine similarity:
    (M, k) similarities and (M, k) indices, nearest first."""
    k = min(int(k), train_features.shape[0])
    similarity = F.normalize(query.double(), dim=1) @ F.normalize(train_features.double(), dim=1).T
    return similarity.topk(k, dim=1)


def knn_predict(
    train_features: torch.Tensor, train_labels: torch.Tensor, query: torch.Tensor, num_classes: int, k: int = 5
) -> torch.Tensor:
    """Majority vote of the ``k`` nearest training examples by cosine similarity.

    Args:
        train_features: (N, C) features of the labelled examples.
        train_labels: (N,) integer classes in ``[0, num_classes)``.
        query: (M, C) features to classify.
        num_classes: number of classes.
        k: neighbours (at most N are used).

    Returns:
        (M,) predicted classes. A tie in the vote goes to the class whose tied neighbours are most similar
        in total (the similarities are added as a tie-breaker below one vote).
    """
    _check_fit_inputs(train_features, train_labels, num_classes)
    top_similarity, top_index = _nearest(train_features, query, k)
    votes = torch.zeros(query.shape[0], num_classes, dtype=torch.float64)
    votes.scatter_add_(1, train_labels[top_index], 1.0 + top_similarity / (2.0 * top_index.shape[1] + 1.0))
    return votes.argmax(dim=1)


def _check_multilabel_inputs(features: torch.Tensor, targets: torch.Tensor, num_classes: int) -> None:
    if features.ndim != 2 or targets.ndim != 2 or features.shape[0] != targets.shape[0]:
        raise ValueError(
            f"features must be (N, C) and targets (N, K), got {tuple(features.shape)}, {tuple(targets.shape)}."
        )
    if features.shape[0] == 0:
        raise ValueError("a probe needs at least one labelled example.")
    if targets.shape[1] != num_classes or not ((targets == 0) | (targets == 1)).all():
        raise ValueError(f"targets must be zeros and ones for {num_classes} classes, got shape {tuple(targets.shape)}.")


def knn_multilabel_scores(
    train_features: torch.Tensor, train_targets: torch.Tensor, query: torch.Tensor, k: int = 5
) -> torch.Tensor:
    """Per class, the share of the ``k`` nearest training examples (cosine similarity) that have it.

    Args:
        train_features: (N, C) features of the labelled examples.
        train_targets: (N, K) zeros and ones, K classes.
        query: (M, C) features to score.
        k: neighbours (at most N are used).

    Returns:
        (M, K) scores in [0, 1], a ranking for each class's AUC.
    """
    _check_multilabel_inputs(train_features, train_targets, train_targets.shape[1])
    neighbours = _nearest(train_features, query, k).indices
    return train_targets.double()[neighbours].mean(dim=1)


class LogisticRegressionProbe:
    """Multinomial logistic regression on standardised features, fitted from scratch by L-BFGS.

    The features are standardised with the training mean and standard deviation; the loss is the mean
    cross-entropy plus ``weight_decay`` · ||W||² / 2 (the bias is not penalised), minimised to convergence
    in float64, so the fit is deterministic for given inputs.

    Args:
        num_classes: number of classes.
        weight_decay: L2 penalty on the weights.
        max_iter: L-BFGS iterations.
    """

    def __init__(self, num_classes: int, weight_decay: float = 1e-2, max_iter: int = 200) -> None:
        self.num_classes = int(num_classes)
        self.weight_decay = float(weight_decay)
        self.max_iter = int(max_iter)
        self.mean: torch.Tensor | None = None
        self.scale: torch.Tensor | None = None
        self.weight: torch.Tensor | None = None
        self.bias: torch.Tensor | None = None

    def _standardise(self, features: torch.Tensor) -> torch.Tensor:
        return (features.double() - self.mean) / self.scale

    def _check(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        _check_fit_inputs(features, labels, self.num_classes)

    def _data_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, labels)

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.softmax(logits, dim=1)

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> LogisticRegressionProbe:
        """Fit on (N, C) features and (N,) classes; returns ``self``."""
        self._check(features, labels)
        features = features.double()
        self.mean = features.mean(dim=0)
        self.scale = features.std(dim=0, unbiased=False).clamp_min(1e-8)
        x = self._standardise(features)
        weight = torch.zeros(x.shape[1], self.num_classes, dtype=torch.float64, requires_grad=True)
        bias = torch.zeros(self.num_classes, dtype=torch.float64, requires_grad=True)
        optimizer = torch.optim.LBFGS(
            [weight, bias],
            max_iter=self.max_iter,
            tolerance_grad=1e-9,
            tolerance_change=1e-12,
            line_search_fn="strong_wolfe",
        )

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            loss = self._data_loss(x @ weight + bias, labels) + 0.5 * self.weight_decay * weight.pow(2).sum()
            loss.backward()
            return loss

        with torch.enable_grad():
            optimizer.step(closure)
        self.weight, self.bias = weight.detach(), bias.detach()
        return self

    def predict_proba(self, features: torch.Tensor) -> torch.Tensor:
        """(M, C) -> (M, num_classes) class probabilities."""
        if self.weight is None:
            raise RuntimeError("LogisticRegressionProbe.predict_proba needs fit() first.")
        return self._probabilities(self._standardise(features) @ self.weight + self.bias)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(M, C) -> (M,) predicted classes."""
        return self.predict_proba(features).argmax(dim=1)


class MultiLabelLogisticProbe(LogisticRegressionProbe):
    """One logistic regression per class (sigmoid outputs, the mean binary cross-entropy over the classes), fitted
    jointly by L-BFGS as :class:`LogisticRegressionProbe` is; ``fit`` takes (N, num_classes) 0/1 targets and
    ``predict_proba`` gives (M, num_classes) independent probabilities."""

    def _check(self, features: torch.Tensor, labels: torch.Tensor) -> None:
        _check_multilabel_inputs(features, labels, self.num_classes)

    def _data_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.binary_cross_entropy_with_logits(logits, labels.double())

    def _probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(M, C) -> (M, num_classes) 0/1 decisions at probability 0.5."""
        return (self.predict_proba(features) >= 0.5).long()


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of (M,) predictions equal to the (M,) labels."""
    return float((predictions == labels).double().mean())


def balanced_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the classes present in ``labels`` of the recall of that class ((M,) each)."""
    recalls = [float((predictions[labels == c] == c).double().mean()) for c in labels.unique()]
    return sum(recalls) / len(recalls)
