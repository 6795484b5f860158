"""Frozen-feature probes against brute-force references written here."""

from __future__ import annotations

import math

import pytest
import torch

from voco_components.evaluation.probes import LogisticRegressionProbe, accuracy, balanced_accuracy, knn_predict


def _brute_force_knn(train: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, k: int) -> list[int]:
    predictions = []
    for q in query:
        sims = [float(q @ t) / (float(q.norm()) * float(t.norm())) for t in train]
        nearest = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        votes: dict[int, list[float]] = {}
        for i in nearest:
            votes.setdefault(int(labels[i]), []).append(sims[i])
        predictions.append(max(votes, key=lambda c: (len(votes[c]), sum(votes[c]))))
    return predictions


def test_knn_matches_brute_force() -> None:
    generator = torch.Generator().manual_seed(0)
    train = torch.randn(40, 6, generator=generator, dtype=torch.float64)
    labels = torch.randint(0, 3, (40,), generator=generator)
    query = torch.randn(25, 6, generator=generator, dtype=torch.float64)
    for k in (1, 4, 7):
        assert knn_predict(train, labels, query, num_classes=3, k=k).tolist() == _brute_force_knn(
            train, labels, query, k
        )


def test_knn_is_scale_invariant_and_caps_k() -> None:
    train = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    query = torch.tensor([[10.0, 1.0], [0.5, 3.0]])
    assert knn_predict(train, labels, query, num_classes=2, k=1).tolist() == [0, 1]
    # k larger than the training set: both neighbours vote once, the more similar one breaks the tie
    assert knn_predict(train, labels, query, num_classes=2, k=50).tolist() == [0, 1]


def test_logistic_regression_separates_and_is_deterministic() -> None:
    generator = torch.Generator().manual_seed(1)
    centres = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    labels = torch.arange(3).repeat_interleave(30)
    features = centres[labels] + torch.randn(90, 3, generator=generator)
    probe = LogisticRegressionProbe(num_classes=3).fit(features, labels)
    assert accuracy(probe.predict(features), labels) > 0.95
    probabilities = probe.predict_proba(features)
    assert torch.allclose(probabilities.sum(dim=1), torch.ones(90, dtype=torch.float64))
    again = LogisticRegressionProbe(num_classes=3).fit(features, labels).predict_proba(features)
    assert torch.equal(probabilities, again)


def test_logistic_regression_matches_the_optimum_of_its_loss() -> None:
    """At the fitted weights the gradient of the penalised loss, computed here by hand, vanishes."""
    generator = torch.Generator().manual_seed(2)
    features = torch.randn(60, 4, generator=generator, dtype=torch.float64)
    labels = (features[:, 0] + 0.5 * torch.randn(60, generator=generator, dtype=torch.float64) > 0).long()
    probe = LogisticRegressionProbe(num_classes=2, weight_decay=0.1).fit(features, labels)
    x = (features - features.mean(0)) / features.std(0, unbiased=False)
    p = torch.softmax(x @ probe.weight + probe.bias, dim=1)
    residual = p - torch.nn.functional.one_hot(labels, 2).double()
    grad_w = x.T @ residual / 60 + 0.1 * probe.weight
    grad_b = residual.mean(0)
    assert grad_w.abs().max() < 1e-6 and grad_b.abs().max() < 1e-6, (grad_w, grad_b)


def test_constant_features_give_the_majority_class() -> None:
    features = torch.ones(10, 5)
    labels = torch.tensor([0] * 7 + [1] * 3)
    probe = LogisticRegressionProbe(num_classes=2).fit(features, labels)
    assert probe.predict(features).tolist() == [0] * 10
    assert balanced_accuracy(probe.predict(features), labels) == pytest.approx(0.5)


def test_balanced_accuracy_by_hand() -> None:
    labels = torch.tensor([0, 0, 0, 0, 1, 1, 2])
    predictions = torch.tensor([0, 0, 0, 1, 1, 0, 2])
    assert accuracy(predictions, labels) == pytest.approx(5 / 7)
    assert balanced_accuracy(predictions, labels) == pytest.approx((3 / 4 + 1 / 2 + 1) / 3)
    assert not math.isnan(balanced_accuracy(torch.tensor([1]), torch.tensor([1])))


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="labels must lie"):
        knn_predict(torch.ones(2, 2), torch.tensor([0, 3]), torch.ones(1, 2), num_classes=3)
    with pytest.raises(ValueError, match=r"\(N, C\)"):
        LogisticRegressionProbe(2).fit(torch.ones(3, 2), torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="fit"):
        LogisticRegressionProbe(2).predict(torch.ones(1, 2))
