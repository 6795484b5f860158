"""Tests of voco_components.losses against per-sample / per-pair Python-loop references (paper Eq. 1-7 and the
author code's variant, docs/voco-official-code-notes.md sections 2-3)."""

from __future__ import annotations

import math

import pytest
import torch

from voco_components.losses.voco import (
    OfficialVoCoLoss,
    VoCoLoss,
    position_logits,
    prediction_loss,
    regularization_loss,
    split_prediction_loss,
    squared_relu_regularization_loss,
    symmetric_relu_logits,
)

LOG_EPS = 1e-6
DT = torch.float64


# ----------------------------------------------------------------------------------------------------------------
# independent references: explicit loops over volumes, crops and pairs
# ----------------------------------------------------------------------------------------------------------------


def ref_cos(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Eq. 1 for two vectors: a.b / (|a||b|) (differentiable, only used on non-zero vectors)."""
    return (a * b).sum() / (torch.sqrt((a * a).sum()) * torch.sqrt((b * b).sum()))


def ref_cos_float(a: torch.Tensor, b: torch.Tensor) -> float:
    a_l, b_l = a.tolist(), b.tolist()
    dot = sum(x * y for x, y in zip(a_l, b_l, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a_l)) * math.sqrt(sum(y * y for y in b_l)))


def ref_logits(random: torch.Tensor, base: torch.Tensor) -> torch.Tensor:
    b_, k, _ = random.shape
    n = base.shape[1]
    out = torch.empty(b_, k, n, dtype=DT)
    for b in range(b_):
        for j in range(k):
            for i in range(n):
                out[b, j, i] = ref_cos_float(random[b, j], base[b, i])
    return out


def ref_pred_loss(logits: torch.Tensor, labels: torch.Tensor, eps: float = LOG_EPS) -> float:
    """Eq. 2-3: -mean log(1 - |y - l|), with 1 - d clamped below at eps."""
    total, count = 0.0, 0
    b_, k, n = logits.shape
    for b in range(b_):
        for j in range(k):
            for i in range(n):
                d = abs(float(labels[b, j, i]) - float(logits[b, j, i]))
                total += -math.log(max(1.0 - d, eps))
                count += 1
    return total / count


def ref_reg_loss(base: torch.Tensor) -> torch.Tensor:
    """Eq. 4-5 with autograd: mean over volumes of mean over i < j of |cos(q_i, q_j)|."""
    per_volume = []
    for b in range(base.shape[0]):
        n = base.shape[1]
        pairs = [ref_cos(base[b, i], base[b, j]).abs() for i in range(n) for j in range(i + 1, n)]
        assert len(pairs) == n * (n - 1) // 2
        per_volume.append(sum(pairs) / len(pairs))
    return sum(per_volume) / len(per_volume)


def ref_pred_loss_autograd(random: torch.Tensor, base: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    terms = []
    for b in range(random.shape[0]):
        for j in range(random.shape[1]):
            for i in range(base.shape[1]):
                d = (labels[b, j, i] - ref_cos(random[b, j], base[b, i])).abs()
                terms.append(-torch.log(torch.clamp_min(1.0 - d, LOG_EPS)))
    return sum(terms) / len(terms)


def ref_split_loss(logits: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    pos_all, neg_all = [], []
    for b in range(logits.shape[0]):
        pos_num = pos_den = neg_num = neg_den = 0.0
        for j in range(logits.shape[1]):
            for i in range(logits.shape[2]):
                y, val = float(labels[b, j, i]), float(logits[b, j, i])
                pos_num += -y * math.log(1.0 - abs(y - val) + 1e-6)
                pos_den += y
                if y == 0:
                    neg_num += val * val
                    neg_den += 1.0
        pos_all.append(pos_num / (pos_den + 1e-6))
        neg_all.append(neg_num / (neg_den + 1e-6))
    return sum(pos_all) / len(pos_all), sum(neg_all) / len(neg_all)


def ref_squared_relu_reg(base: torch.Tensor) -> torch.Tensor:
    """Author-code regulariser with autograd: mean over i < j of relu(cos(q_i, sg(q_j)))^2, then mean over B."""
    per_volume = []
    for b in range(base.shape[0]):
        n = base.shape[1]
        pairs = [torch.relu(ref_cos(base[b, i], base[b, j].detach())) ** 2 for i in range(n) for j in range(i + 1, n)]
        per_volume.append(sum(pairs) / len(pairs))
    return sum(per_volume) / len(per_volume)


def make_labels(b: int, k: int, n: int, seed: int = 0) -> torch.Tensor:
    """Overlap-like labels: rows sum to 1 with some exact zeros."""
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(b, k, n, generator=g, dtype=DT)
    raw[raw < 0.4] = 0.0
    raw[..., 0] += 0.1  # no all-zero row
    return raw / raw.sum(-1, keepdim=True)


def feats(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=DT)


# ----------------------------------------------------------------------------------------------------------------
# paper losses
# ----------------------------------------------------------------------------------------------------------------


def test_position_logits_matches_loop():
    random, base = feats(3, 2, 7, seed=1), feats(3, 4, 7, seed=2)
    logits = position_logits(random, base)
    assert logits.shape == (3, 2, 4)
    torch.testing.assert_close(logits, ref_logits(random, base), rtol=1e-12, atol=1e-12)
    assert logits.min() < 0  # cosines are not clipped


def test_position_logits_shape_errors():
    with pytest.raises(ValueError):
        position_logits(torch.randn(2, 3), torch.randn(2, 4, 3))
    with pytest.raises(ValueError):
        position_logits(torch.randn(2, 2, 5), torch.randn(3, 4, 5))  # B differs
    with pytest.raises(ValueError):
        position_logits(torch.randn(2, 2, 5), torch.randn(2, 4, 6))  # C differs


def test_prediction_loss_matches_loop_with_negative_cosines():
    logits = torch.empty(2, 3, 4, dtype=DT).uniform_(-0.45, 0.95, generator=torch.Generator().manual_seed(3))
    labels = make_labels(2, 3, 4, seed=4)
    assert (logits < 0).any()
    expected = ref_pred_loss(logits, labels)
    assert prediction_loss(logits, labels).item() == pytest.approx(expected, rel=1e-12)


def test_prediction_loss_hand_values():
    # d = |y - l|: l = -0.3, y = 0.2 -> d = 0.5 (a negative cosine is not clipped to 0, which would give d = 0.2)
    logits = torch.tensor([[[-0.3, 0.5]]], dtype=DT)
    labels = torch.tensor([[[0.2, 0.5]]], dtype=DT)
    expected = -(math.log(0.5) + math.log(1.0)) / 2
    assert prediction_loss(logits, labels).item() == pytest.approx(expected, rel=1e-12)


def test_prediction_loss_clamps_at_eps():
    # 1 - d < eps: l = -1, y = 1 (d = 2) and l = -1, y = 0 (d = 1) and l = 0, y = 1 (d = 1)
    logits = torch.tensor([[[-1.0, -1.0, 0.0]]], dtype=DT, requires_grad=True)
    labels = torch.tensor([[[1.0, 0.0, 1.0]]], dtype=DT)
    loss = prediction_loss(logits, labels)
    assert loss.item() == pytest.approx(-math.log(LOG_EPS), rel=1e-12)
    loss.backward()
    assert torch.isfinite(logits.grad).all()
    # custom eps
    assert prediction_loss(logits.detach(), labels, eps=1e-3).item() == pytest.approx(-math.log(1e-3), rel=1e-12)
    # one clamped and one regular term
    mixed = prediction_loss(torch.tensor([[[-1.0, 0.6]]], dtype=DT), torch.tensor([[[1.0, 0.5]]], dtype=DT))
    assert mixed.item() == pytest.approx((-math.log(LOG_EPS) - math.log(0.9)) / 2, rel=1e-12)


def test_prediction_loss_shape_mismatch():
    with pytest.raises(ValueError):
        prediction_loss(torch.zeros(1, 2, 3), torch.zeros(1, 3, 2))


def test_regularization_loss_matches_pair_loop():
    base = feats(3, 5, 6, seed=5)
    with torch.no_grad():
        expected = ref_reg_loss(base).item()
    assert regularization_loss(base).item() == pytest.approx(expected, rel=1e-12)


def test_regularization_loss_hand_values():
    # volume 0: q0 = e0, q1 = e0 + e1 (cos 1/sqrt2), q2 = -e0 (cos -1 with q0, -1/sqrt2 with q1)
    # |s| pairs: 1/sqrt2, 1, 1/sqrt2 -> mean (1 + sqrt2) / 3 ; volume 1: orthogonal -> 0
    base = torch.tensor(
        [[[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]], [[1.0, 0.0], [0.0, 2.0], [0.0, 0.0]]],
        dtype=DT,
    )
    expected = ((1.0 + math.sqrt(2.0)) / 3 + 0.0) / 2
    assert regularization_loss(base).item() == pytest.approx(expected, rel=1e-12)


def test_regularization_loss_needs_two_bases():
    with pytest.raises(ValueError):
        regularization_loss(torch.randn(2, 1, 4))
    with pytest.raises(ValueError):
        regularization_loss(torch.randn(5, 4))


@pytest.mark.parametrize("lambda_reg", [1.0, 0.5])
def test_voco_loss_total_and_terms(lambda_reg):
    random, base, labels = feats(2, 3, 8, seed=6), feats(2, 4, 8, seed=7), make_labels(2, 3, 4, seed=8)
    pred = ref_pred_loss(ref_logits(random, base), labels)
    with torch.no_grad():
        reg = ref_reg_loss(base).item()
    crit = VoCoLoss(lambda_reg=lambda_reg)
    total = crit(random, base, labels)
    assert total.item() == pytest.approx(pred + lambda_reg * reg, rel=1e-12)
    assert set(crit.terms) == {"pred", "reg"}
    assert crit.terms["pred"].item() == pytest.approx(pred, rel=1e-12)
    assert crit.terms["reg"].item() == pytest.approx(reg, rel=1e-12)  # unweighted
    assert not crit.terms["pred"].requires_grad


def test_voco_loss_switches():
    random, base, labels = feats(2, 3, 8, seed=6), feats(2, 4, 8, seed=7), make_labels(2, 3, 4, seed=8)
    pred = ref_pred_loss(ref_logits(random, base), labels)
    with torch.no_grad():
        reg = ref_reg_loss(base).item()
    only_pred = VoCoLoss(lambda_reg=0.5, use_reg=False)
    assert only_pred(random, base, labels).item() == pytest.approx(pred, rel=1e-12)
    assert only_pred.terms["reg"].item() == 0.0
    only_reg = VoCoLoss(lambda_reg=0.5, use_pred=False)
    assert only_reg(random, base, labels).item() == pytest.approx(0.5 * reg, rel=1e-12)
    assert only_reg.terms["pred"].item() == 0.0
    with pytest.raises(ValueError):
        VoCoLoss(use_pred=False, use_reg=False)


def _leaves(seed: int = 0):
    random = feats(2, 3, 8, seed=seed).requires_grad_(True)
    base = feats(2, 4, 8, seed=seed + 1).requires_grad_(True)
    labels = make_labels(2, 3, 4, seed=seed + 2)
    distance = (labels - ref_logits(random.detach(), base.detach())).abs()
    assert (distance < 1 - LOG_EPS).any() and (distance > 1).any()  # both regular and clamped terms
    assert (ref_logits(base.detach(), base.detach()) < 0).any()  # |s| is exercised on negative cosines
    return random, base, labels


def _is_zero_or_none(grad: torch.Tensor | None) -> bool:
    return grad is None or bool((grad == 0).all())


def test_stop_gradient_prediction_term_does_not_reach_bases():
    random, base, labels = _leaves(10)
    VoCoLoss(use_reg=False)(random, base, labels).backward()
    assert _is_zero_or_none(base.grad)
    assert random.grad is not None and random.grad.abs().sum() > 0
    # the random-crop gradient equals autograd of the loop reference with detached bases
    r2 = random.detach().clone().requires_grad_(True)
    ref_pred_loss_autograd(r2, base.detach(), labels).backward()
    torch.testing.assert_close(random.grad, r2.grad, rtol=1e-9, atol=1e-12)


def test_stop_gradient_regulariser_only_reaches_bases():
    random, base, labels = _leaves(10)
    VoCoLoss(use_pred=False)(random, base, labels).backward()
    assert _is_zero_or_none(random.grad)
    assert base.grad is not None and base.grad.abs().sum() > 0


@pytest.mark.parametrize("lambda_reg", [1.0, 0.5])
def test_stop_gradient_base_grad_is_regulariser_grad(lambda_reg):
    random, base, labels = _leaves(30)
    VoCoLoss(lambda_reg=lambda_reg)(random, base, labels).backward()
    b2 = base.detach().clone().requires_grad_(True)
    (lambda_reg * ref_reg_loss(b2)).backward()
    torch.testing.assert_close(base.grad, b2.grad, rtol=1e-9, atol=1e-12)
    r2 = random.detach().clone().requires_grad_(True)
    ref_pred_loss_autograd(r2, base.detach(), labels).backward()
    torch.testing.assert_close(random.grad, r2.grad, rtol=1e-9, atol=1e-12)


def _assert_all_finite(loss, *leaves):
    assert torch.isfinite(loss).all(), loss
    loss.backward()
    for leaf in leaves:
        assert leaf.grad is None or torch.isfinite(leaf.grad).all(), leaf.grad


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", ["identical", "zeros", "opposite", "zero_random"])
def test_numerical_safety(case, dtype):
    c = 6
    q = torch.randn(1, 1, c, generator=torch.Generator().manual_seed(1)).to(dtype)
    if case == "identical":
        random, base = q.expand(1, 2, c).clone(), q.expand(1, 3, c).clone()
    elif case == "zeros":
        random, base = torch.zeros(1, 2, c, dtype=dtype), torch.zeros(1, 3, c, dtype=dtype)
    elif case == "opposite":  # p = -q: cos = -1 exactly, and bases with cos = -1 between them
        random = (-q).expand(1, 2, c).clone()
        base = torch.cat([q, -q, q], dim=1)
    else:
        random, base = torch.zeros(1, 2, c, dtype=dtype), torch.cat([q, -q, 2 * q], dim=1)
    labels = torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]], dtype=dtype)  # labels 0 and 1
    random.requires_grad_(True)
    base.requires_grad_(True)
    loss = VoCoLoss()(random, base, labels)
    _assert_all_finite(loss, random, base)
    assert loss.item() <= -math.log(LOG_EPS) + 1.0 + 1e-4  # pred <= -log(eps), reg <= 1

    student = (random.detach().clone().requires_grad_(True), base.detach().clone().requires_grad_(True))
    teacher = (random.detach().clone(), base.detach().clone())
    official = OfficialVoCoLoss()(*student, *teacher, labels)
    _assert_all_finite(official, *student)

    logits = position_logits(random.detach(), base.detach())
    assert torch.isfinite(logits).all() and logits.abs().max() <= 1.0


def test_opposite_vectors_pred_term_is_clamped_value():
    q = torch.tensor([[[1.0, 2.0, -0.5]]], dtype=DT)
    random, base = -q, q.clone()
    labels = torch.ones(1, 1, 1, dtype=DT)  # d = |1 - (-1)| = 2
    assert VoCoLoss(use_reg=False)(random, base, labels).item() == pytest.approx(-math.log(LOG_EPS), rel=1e-9)


def test_vectorised_over_batch_equals_mean_of_per_volume_losses():
    b_ = 4
    random, base, labels = feats(b_, 3, 8, seed=40), feats(b_, 5, 8, seed=41), make_labels(b_, 3, 5, seed=42)
    for crit in (VoCoLoss(lambda_reg=0.5), OfficialVoCoLoss()):
        if isinstance(crit, VoCoLoss):
            batch = crit(random, base, labels)
            single = [crit(random[i : i + 1], base[i : i + 1], labels[i : i + 1]) for i in range(b_)]
        else:
            t_random, t_base = feats(b_, 3, 8, seed=43), feats(b_, 5, 8, seed=44)
            batch = crit(random, base, t_random, t_base, labels)
            single = [
                crit(random[i : i + 1], base[i : i + 1], t_random[i : i + 1], t_base[i : i + 1], labels[i : i + 1])
                for i in range(b_)
            ]
        assert batch.item() == pytest.approx(sum(s.item() for s in single) / b_, rel=1e-12)


# ----------------------------------------------------------------------------------------------------------------
# author-code variant
# ----------------------------------------------------------------------------------------------------------------


def test_symmetric_relu_logits_loop_and_teacher_gets_no_grad():
    s_r, s_b = feats(2, 3, 6, seed=50).requires_grad_(True), feats(2, 4, 6, seed=51).requires_grad_(True)
    t_r, t_b = feats(2, 3, 6, seed=52).requires_grad_(True), feats(2, 4, 6, seed=53).requires_grad_(True)
    logits = symmetric_relu_logits(s_r, s_b, t_r, t_b)
    assert logits.shape == (2, 3, 4)
    expected = torch.empty(2, 3, 4, dtype=DT)
    for b in range(2):
        for j in range(3):
            for i in range(4):
                first = max(ref_cos_float(s_r[b, j].detach(), t_b[b, i].detach()), 0.0)
                second = max(ref_cos_float(t_r[b, j].detach(), s_b[b, i].detach()), 0.0)
                expected[b, j, i] = 0.5 * (first + second)
    torch.testing.assert_close(logits.detach(), expected, rtol=1e-12, atol=1e-12)
    assert (expected == 0).any() and (expected > 0).any()  # ReLU is exercised
    logits.sum().backward()
    assert _is_zero_or_none(t_r.grad) and _is_zero_or_none(t_b.grad)
    assert s_r.grad.abs().sum() > 0 and s_b.grad.abs().sum() > 0


def test_split_prediction_loss_matches_loop():
    logits = torch.rand(3, 4, 5, generator=torch.Generator().manual_seed(60), dtype=DT)
    labels = make_labels(3, 4, 5, seed=61)
    assert (labels == 0).any() and (labels > 0).any()
    pos, neg = split_prediction_loss(logits, labels)
    ref_pos, ref_neg = ref_split_loss(logits, labels)
    assert pos.item() == pytest.approx(ref_pos, rel=1e-12)
    assert neg.item() == pytest.approx(ref_neg, rel=1e-12)


def test_split_prediction_loss_hand_values():
    # one volume, one random crop on two of three bases: y = (0.75, 0.25, 0), l = (0.5, 0.25, 0.5)
    logits = torch.tensor([[[0.5, 0.25, 0.5]]], dtype=DT)
    labels = torch.tensor([[[0.75, 0.25, 0.0]]], dtype=DT)
    pos, neg = split_prediction_loss(logits, labels)
    expected_pos = (-0.75 * math.log(1 - 0.25 + 1e-6) - 0.25 * math.log(1 + 1e-6)) / (1.0 + 1e-6)
    assert pos.item() == pytest.approx(expected_pos, rel=1e-12)
    assert neg.item() == pytest.approx(0.25 / (1 + 1e-6), rel=1e-12)


def test_squared_relu_regulariser_loop_and_detached_second_side():
    base = feats(2, 4, 6, seed=70).requires_grad_(True)
    loss = squared_relu_regularization_loss(base)
    b_ref = base.detach().clone().requires_grad_(True)
    ref = ref_squared_relu_reg(b_ref)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-12)
    loss.backward()
    ref.backward()
    torch.testing.assert_close(base.grad, b_ref.grad, rtol=1e-9, atol=1e-12)
    # the test can tell: without the detach, the gradient would differ
    b_full = base.detach().clone().requires_grad_(True)
    full = []
    for b in range(2):
        pairs = [torch.relu(ref_cos(b_full[b, i], b_full[b, j])) ** 2 for i in range(4) for j in range(i + 1, 4)]
        full.append(sum(pairs) / len(pairs))
    (sum(full) / 2).backward()
    assert not torch.allclose(base.grad, b_full.grad)
    # the last base is only ever the detached side of a pair: no gradient
    assert (base.grad[:, -1] == 0).all()


def test_squared_relu_regulariser_ignores_negative_cosines():
    base = torch.tensor([[[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]], dtype=DT)  # cos: -1, 0, 0
    assert squared_relu_regularization_loss(base).item() == 0.0
    base = torch.tensor([[[1.0, 0.0], [1.0, 1.0], [-1.0, 0.0]]], dtype=DT)  # cos: 1/sqrt2, -1, -1/sqrt2
    assert squared_relu_regularization_loss(base).item() == pytest.approx(0.5 / 3, rel=1e-12)


def test_official_loss_equals_pos_neg_reg():
    s_r, s_b = feats(2, 3, 6, seed=80), feats(2, 4, 6, seed=81)
    t_r, t_b = feats(2, 3, 6, seed=82), feats(2, 4, 6, seed=83)
    labels = make_labels(2, 3, 4, seed=84)
    logits = torch.empty(2, 3, 4, dtype=DT)
    for b in range(2):
        for j in range(3):
            for i in range(4):
                logits[b, j, i] = 0.5 * (
                    max(ref_cos_float(s_r[b, j], t_b[b, i]), 0.0) + max(ref_cos_float(t_r[b, j], s_b[b, i]), 0.0)
                )
    pos, neg = ref_split_loss(logits, labels)
    with torch.no_grad():
        reg = ref_squared_relu_reg(s_b).item()
    crit = OfficialVoCoLoss()
    total = crit(s_r, s_b, t_r, t_b, labels)
    assert total.item() == pytest.approx(pos + neg + reg, rel=1e-12)
    assert set(crit.terms) == {"pos", "neg", "reg"}
    assert crit.terms["pos"].item() == pytest.approx(pos, rel=1e-12)
    assert crit.terms["neg"].item() == pytest.approx(neg, rel=1e-12)
    assert crit.terms["reg"].item() == pytest.approx(reg, rel=1e-12)
