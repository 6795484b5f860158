"""Probes on frozen features: cosine k-nearest neighbours, multinomial logistic regression, balanced accuracy."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["knn_predict", "LogisticRegressionProbe", "accuracy", "balanced_accuracy"]


def _check_fit_inputs(features: torch.Tensor, labels: torch.Tensor, num_classes: int) -> None:
    if features.ndim != 2 or labels.ndim != 1 or features.shape[0] != labels.shape[0]:
        raise ValueError(
            f"features must be (N, C) and labels (N,), got {tuple(features.shape)}, {tuple(labels.shape)}."
        )
    if features.shape[0] == 0:
        raise ValueError("a probe needs at least one labelled example.")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}].")


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
    k = min(int(k), train_features.shape[0])
    similarity = F.normalize(query.double(), dim=1) @ F.normalize(train_features.double(), dim=1).T
    top_similarity, top_index = similarity.topk(k, dim=1)
    votes = torch.zeros(query.shape[0], num_classes, dtype=torch.float64)
    votes.scatter_add_(1, train_labels[top_index], 1.0 + top_similarity / (2.0 * k + 1.0))
    return votes.argmax(dim=1)


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

    def fit(self, features: torch.Tensor, labels: torch.Tensor) -> LogisticRegressionProbe:
        """Fit on (N, C) features and (N,) classes; returns ``self``."""
        _check_fit_inputs(features, labels, self.num_classes)
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
            loss = F.cross_entropy(x @ weight + bias, labels) + 0.5 * self.weight_decay * weight.pow(2).sum()
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
        return torch.softmax(self._standardise(features) @ self.weight + self.bias, dim=1)

    def predict(self, features: torch.Tensor) -> torch.Tensor:
        """(M, C) -> (M,) predicted classes."""
        return self.predict_proba(features).argmax(dim=1)


def accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Fraction of (M,) predictions equal to the (M,) labels."""
    return float((predictions == labels).double().mean())


def balanced_accuracy(predictions: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean over the classes present in ``labels`` of the recall of that class ((M,) each)."""
    recalls = [float((predictions[labels == c] == c).double().mean()) for c in labels.unique()]
    return sum(recalls) / len(recalls)
