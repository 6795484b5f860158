"""Tests of the Ignite/MONAI glue (voco_components.engines.workflow), the position metrics
(voco_components.metrics.position) and the variant switch (voco_components.variants), including real
SupervisedTrainer / SupervisedEvaluator runs."""

from __future__ import annotations

import copy
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from ignite.engine import Events
from ignite.exceptions import NotComputableError
from monai.engines import SupervisedEvaluator, SupervisedTrainer
from monai.handlers import ValidationHandler
from monai.utils import CommonKeys
from torch import nn

from voco_components.engines.workflow import VoCoCriterion, VoCoPrepareBatch, epochs_for, split_crop_features
from voco_components.handlers.ema_teacher import EMATeacherHandler
from voco_components.handlers.last_step import LastStepHandler
from voco_components.handlers.loss_terms import LossTermsHandler
from voco_components.losses.voco import OfficialVoCoLoss, VoCoLoss
from voco_components.metrics.position import (
    BaseEffectiveRank,
    ChanceTop1,
    PositionAUC,
    PositionMAE,
    PositionTop1Accuracy,
    chance_top1,
    effective_rank,
    position_auc,
    top1_hits,
)
from voco_components.networks.encoders import SwinEncoder, UNetEncoder
from voco_components.networks.voco_net import VoCoNet, VoCoTeacherStudent
from voco_components.transforms.crops import VoCoCropd
from voco_components.variants import VARIANTS, get_variant, training_network

DT = torch.float64


# ----------------------------------------------------------------------------------------------------------------
# loop references (independent of the library)
# ----------------------------------------------------------------------------------------------------------------


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    a_l, b_l = [float(v) for v in a], [float(v) for v in b]
    dot = sum(x * y for x, y in zip(a_l, b_l, strict=True))
    return dot / (math.sqrt(sum(x * x for x in a_l)) * math.sqrt(sum(y * y for y in b_l)))


def _volume_crops(features: torch.Tensor, b: int, n: int, k: int) -> tuple[list, list]:
    """Base and random crop features of volume b by explicit row indices (n bases first per volume)."""
    start = b * (n + k)
    return [features[start + i] for i in range(n)], [features[start + n + j] for j in range(k)]


def ref_paper_loss(features: torch.Tensor, labels: torch.Tensor, lambda_reg: float = 1.0) -> tuple[float, float]:
    b_, k, n = labels.shape
    pred_terms, reg_volumes = [], []
    for b in range(b_):
        base, random = _volume_crops(features, b, n, k)
        for j in range(k):
            for i in range(n):
                d = abs(float(labels[b, j, i]) - _cos(random[j], base[i]))
                pred_terms.append(-math.log(max(1 - d, 1e-6)))
        pairs = [abs(_cos(base[i], base[j])) for i in range(n) for j in range(i + 1, n)]
        reg_volumes.append(sum(pairs) / len(pairs))
    return sum(pred_terms) / len(pred_terms), sum(reg_volumes) / len(reg_volumes)


def ref_official_loss(output: torch.Tensor, labels: torch.Tensor) -> tuple[float, float, float]:
    b_, k, n = labels.shape
    pos_v, neg_v, reg_v = [], [], []
    for b in range(b_):
        s_base, s_random = _volume_crops(output[0], b, n, k)
        t_base, t_random = _volume_crops(output[1], b, n, k)
        pos_num = pos_den = neg_num = neg_den = 0.0
        for j in range(k):
            for i in range(n):
                logit = 0.5 * (max(_cos(s_random[j], t_base[i]), 0.0) + max(_cos(t_random[j], s_base[i]), 0.0))
                y = float(labels[b, j, i])
                pos_num += -y * math.log(1 - abs(y - logit) + 1e-6)
                pos_den += y
                if y == 0:
                    neg_num += logit**2
                    neg_den += 1
        pos_v.append(pos_num / (pos_den + 1e-6))
        neg_v.append(neg_num / (neg_den + 1e-6))
        pairs = [max(_cos(s_base[i], s_base[j]), 0.0) ** 2 for i in range(n) for j in range(i + 1, n)]
        reg_v.append(sum(pairs) / len(pairs))
    return sum(pos_v) / b_, sum(neg_v) / b_, sum(reg_v) / b_


def _labels(b: int, k: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    raw = torch.rand(b, k, n, generator=g, dtype=DT)
    raw[raw < 0.5] = 0
    raw[..., -1] += 0.2
    return raw / raw.sum(-1, keepdim=True)


def _randn(*shape: int, seed: int = 0, dtype=DT) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


# ----------------------------------------------------------------------------------------------------------------
# split_crop_features / VoCoPrepareBatch
# ----------------------------------------------------------------------------------------------------------------


def test_split_crop_features_puts_bases_first_per_volume():
    b_, k, n, c = 3, 2, 4, 5
    # row r = volume * (n + k) + crop; value = 100 * volume + crop + 0.01 * channel
    features = torch.tensor(
        [[100.0 * v + crop + 0.01 * ch for ch in range(c)] for v in range(b_) for crop in range(n + k)]
    )
    random, base = split_crop_features(features, torch.zeros(b_, k, n))
    assert random.shape == (b_, k, c) and base.shape == (b_, n, c)
    for v in range(b_):
        for i in range(n):
            assert base[v, i].tolist() == pytest.approx([100.0 * v + i + 0.01 * ch for ch in range(c)])
        for j in range(k):
            assert random[v, j].tolist() == pytest.approx([100.0 * v + n + j + 0.01 * ch for ch in range(c)])


def test_split_crop_features_errors():
    with pytest.raises(ValueError):
        split_crop_features(torch.zeros(12, 4), torch.zeros(2, 6))  # labels not (B, k, n)
    with pytest.raises(ValueError):
        split_crop_features(torch.zeros(11, 4), torch.zeros(2, 2, 4))  # 11 != 2 * 6
    with pytest.raises(ValueError):
        split_crop_features(torch.zeros(2, 6, 4), torch.zeros(2, 2, 4))  # features not 2-D


def test_prepare_batch_flattens_volumes_in_order():
    b_, k, n = 2, 2, 3
    images = torch.zeros(b_, n + k, 1, 2, 2, 2)
    for v in range(b_):
        for crop in range(n + k):
            images[v, crop] = 10 * v + crop
    labels = torch.rand(b_, k, n)
    inputs, out_labels = VoCoPrepareBatch()({"image": images, "label": labels}, device="cpu")
    assert inputs.shape == (b_ * (n + k), 1, 2, 2, 2)
    for row in range(b_ * (n + k)):
        v, crop = divmod(row, n + k)
        assert bool((inputs[row] == 10 * v + crop).all())
    assert torch.equal(out_labels, labels)
    # the first n rows of each volume are its bases, so split_crop_features recovers the crop indices
    random, base = split_crop_features(inputs.flatten(1), out_labels)
    assert base[1, :, 0].tolist() == [10.0, 11.0, 12.0] and random[1, :, 0].tolist() == [13.0, 14.0]
    # other keys
    inputs2, _ = VoCoPrepareBatch(image_key="crops", label_key="y")({"crops": images, "y": labels})
    assert torch.equal(inputs2, inputs)


def test_prepare_batch_errors():
    prep = VoCoPrepareBatch()
    with pytest.raises(ValueError):
        prep({"image": torch.zeros(5, 1, 2, 2), "label": torch.zeros(1, 2, 3)})  # 4-D image
    with pytest.raises(ValueError):
        prep({"image": torch.zeros(5, 1, 2, 2, 2), "label": torch.zeros(1, 2, 3)})  # 2D crops of 5 images, 1 label
    with pytest.raises(ValueError):
        prep({"image": torch.zeros(1, 5, 1, 2, 2, 2), "label": torch.zeros(1, 2, 4)})  # n + k = 6 != 5
    with pytest.raises(ValueError):
        prep({"image": torch.zeros(1, 5, 1, 2, 2, 2), "label": torch.zeros(2, 2, 3)})  # B differs
    with pytest.raises(ValueError):
        prep({"image": torch.zeros(1, 5, 1, 2, 2, 2), "label": torch.zeros(2, 3)})  # labels not 3-D


# ----------------------------------------------------------------------------------------------------------------
# VoCoCriterion, handlers, variants
# ----------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lambda_reg", [1.0, 0.5])
def test_criterion_paper_matches_reference(lambda_reg):
    b_, k, n = 2, 3, 4
    features, labels = _randn(b_ * (n + k), 8, seed=1), _labels(b_, k, n, seed=2)
    crit = VoCoCriterion("paper", lambda_reg=lambda_reg)
    assert isinstance(crit.loss, VoCoLoss)
    loss = crit(features, labels)
    pred, reg = ref_paper_loss(features, labels)
    assert loss.item() == pytest.approx(pred + lambda_reg * reg, rel=1e-10)
    assert crit.terms["pred"].item() == pytest.approx(pred, rel=1e-10)
    assert crit.terms["reg"].item() == pytest.approx(reg, rel=1e-10)


def test_criterion_official_matches_reference():
    b_, k, n = 2, 3, 4
    output, labels = _randn(2, b_ * (n + k), 8, seed=3), _labels(b_, k, n, seed=4)
    crit = VoCoCriterion("official")
    assert isinstance(crit.loss, OfficialVoCoLoss)
    loss = crit(output, labels)
    pos, neg, reg = ref_official_loss(output, labels)
    assert loss.item() == pytest.approx(pos + neg + reg, rel=1e-10)
    assert {name: v.item() for name, v in crit.terms.items()} == pytest.approx(
        {"pos": pos, "neg": neg, "reg": reg}, rel=1e-10
    )
    with pytest.raises(ValueError):
        crit(output[0], labels)  # (N, C): no teacher features
    with pytest.raises(ValueError):
        crit(torch.cat([output, output[:1]]), labels)  # (3, N, C)


def test_unknown_variant():
    with pytest.raises(ValueError, match="paper"):
        get_variant("moco")
    with pytest.raises(ValueError):
        VoCoCriterion("moco")


def test_variants():
    paper, official = get_variant("paper"), get_variant("official")
    assert paper.name == "paper" and not paper.uses_teacher and paper.teacher_momentum is None
    assert paper.multiscale_embedding is False
    assert official.name == "official" and official.uses_teacher and official.teacher_momentum == 0.9
    assert official.multiscale_embedding is True
    assert set(VARIANTS) == {"paper", "official"}
    torch.manual_seed(0)
    net = VoCoNet(UNetEncoder(features=(4, 4, 8, 8, 16, 4)), hidden_dim=8, out_dim=4)
    assert training_network(net, "paper") is net
    pair = training_network(net, "official")
    assert isinstance(pair, VoCoTeacherStudent) and pair.student is net
    with pytest.raises(ValueError):
        training_network(net, "nope")


@pytest.mark.parametrize("momentum", [-0.1, 1.0, 1.5])
def test_ema_handler_rejects_momentum(momentum):
    with pytest.raises(ValueError):
        EMATeacherHandler(momentum)


def test_ema_handler_type_error_and_explicit_network():
    torch.manual_seed(0)
    net = VoCoNet(UNetEncoder(features=(4, 4, 8, 8, 16, 4)), hidden_dim=8, out_dim=4)
    with pytest.raises(TypeError):
        EMATeacherHandler(0.9)(SimpleNamespace(network=net))
    with pytest.raises(TypeError):
        EMATeacherHandler(0.9, network=net)(SimpleNamespace(network=None))
    pair = VoCoTeacherStudent(net)
    with torch.no_grad():
        for p in pair.student.parameters():
            p.add_(1.0)
    old = [p.clone() for p in pair.teacher.parameters()]
    EMATeacherHandler(0.0, network=pair)(SimpleNamespace(network=None))  # momentum 0: teacher := student
    for t, s, o in zip(pair.teacher.parameters(), pair.student.parameters(), old, strict=True):
        assert torch.equal(t, s) and not torch.equal(t, o)


def test_loss_terms_handler_writes_detached_tensors():
    """The terms stay 0-d tensors without a graph (no host sync per step); their values are the criterion's."""
    crit = VoCoCriterion("paper")
    features = _randn(2 * 5, 6, seed=5).requires_grad_()
    crit(features, _labels(2, 2, 3, seed=6))
    engine = SimpleNamespace(state=SimpleNamespace(output={"loss": torch.tensor(1.0)}))
    LossTermsHandler(crit)(engine)
    out = engine.state.output
    for term in ("pred", "reg"):
        value = out[f"loss_{term}"]
        assert isinstance(value, torch.Tensor) and value.ndim == 0 and not value.requires_grad
        assert float(value) == pytest.approx(crit.terms[term].item())


# ----------------------------------------------------------------------------------------------------------------
# real SupervisedTrainer runs
# ----------------------------------------------------------------------------------------------------------------


def _voco_loader(num: int = 2, same: bool = False) -> torch.utils.data.DataLoader:
    crop = VoCoCropd(keys="image", region_size=(64, 64, 32), grid=(2, 2, 1), roi_size=(32, 32, 32), num_crops=2)
    crop.set_random_state(0)
    gen = torch.Generator().manual_seed(0)
    vol = torch.rand(1, 40, 40, 20, generator=gen)
    items = [crop({"image": vol})] * num if same else [crop({"image": vol}) for _ in range(num)]
    assert items[0]["image"].shape == (6, 1, 32, 32, 32) and items[0]["label"].shape == (2, 4)
    return torch.utils.data.DataLoader(items, batch_size=1, shuffle=False)


class _Snapshot:
    """Ignite handler: copies the student's and teacher's state at ITERATION_COMPLETED."""

    def __init__(self, pair: VoCoTeacherStudent) -> None:
        self.pair = pair
        self.records: list[tuple[dict, dict]] = []

    def attach(self, engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine) -> None:
        clone = lambda m: {k: v.detach().clone() for k, v in m.state_dict().items()}  # noqa: E731
        self.records.append((clone(self.pair.student), clone(self.pair.teacher)))


@pytest.mark.slow
def test_official_trainer_updates_teacher_by_ema():
    torch.manual_seed(0)
    net = VoCoNet(SwinEncoder(feature_size=12, window_size=4), hidden_dim=32, out_dim=16)
    pair = training_network(net, "official")
    teacher0 = {k: v.clone() for k, v in pair.teacher.state_dict().items()}
    crit = VoCoCriterion("official")
    before, after = _Snapshot(pair), _Snapshot(pair)
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=_voco_loader(2),
        network=pair,
        optimizer=torch.optim.SGD(pair.parameters(), lr=0.5),  # teacher params included, as in the author code
        loss_function=crit,
        prepare_batch=VoCoPrepareBatch(),
        train_handlers=[before, EMATeacherHandler(0.9), after, LossTermsHandler(crit)],
        decollate=False,
    )
    trainer.run()
    assert trainer.state.iteration == 2 and len(before.records) == len(after.records) == 2

    m = 0.9
    student1, student2 = before.records[0][0], before.records[1][0]
    key = "projector.layers.6.weight"
    assert not torch.allclose(student1[key], teacher0[key])  # the student moved
    expected = m * (m * teacher0[key] + (1 - m) * student1[key]) + (1 - m) * student2[key]
    final = pair.teacher.state_dict()
    torch.testing.assert_close(final[key], expected, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(final[key], teacher0[key])

    previous = teacher0
    for (student, teacher_pre), (_, teacher_post) in zip(before.records, after.records, strict=True):
        for name, _ in pair.teacher.named_parameters():
            # neither the optimizer nor the forward pass touched the teacher's parameters ...
            torch.testing.assert_close(teacher_pre[name], previous[name], rtol=0, atol=0)
            # ... and the handler moved them towards the student by EMA
            torch.testing.assert_close(
                teacher_post[name], m * teacher_pre[name] + (1 - m) * student[name], rtol=1e-5, atol=1e-6
            )
        previous = teacher_post
    assert all(p.grad is None for p in pair.teacher.parameters())

    out = trainer.state.output
    assert isinstance(out, dict)
    terms = {name: out[f"loss_{name}"] for name in ("pos", "neg", "reg")}
    assert all(torch.is_tensor(v) and v.ndim == 0 and math.isfinite(float(v)) for v in terms.values())
    assert out[CommonKeys.LOSS].item() == pytest.approx(sum(float(v) for v in terms.values()), rel=1e-5)
    assert out[CommonKeys.PRED].shape == (2, 6, 16)


@pytest.mark.slow
def test_paper_trainer_runs_and_loss_decreases():
    torch.manual_seed(0)
    net = VoCoNet(SwinEncoder(feature_size=12, window_size=4), hidden_dim=32, out_dim=16)
    assert training_network(net, "paper") is net
    crit = VoCoCriterion("paper")
    losses: list[dict] = []

    class Record:
        def attach(self, engine):
            engine.add_event_handler(Events.ITERATION_COMPLETED, self)

        def __call__(self, engine):
            losses.append({k: float(engine.state.output[k]) for k in ("loss_pred", "loss_reg")})
            losses[-1]["loss"] = engine.state.output[CommonKeys.LOSS].item()

    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=_voco_loader(3, same=True),  # one batch three times: gradient descent must lower it
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.05),
        loss_function=crit,
        prepare_batch=VoCoPrepareBatch(),
        train_handlers=[LossTermsHandler(crit), Record()],
        decollate=False,
    )
    trainer.run()
    assert len(losses) == 3
    for record in losses:
        assert all(math.isfinite(v) for v in record.values())
        assert record["loss"] == pytest.approx(record["loss_pred"] + record["loss_reg"], rel=1e-5)
    assert losses[-1]["loss"] < losses[0]["loss"]
    assert trainer.state.output[CommonKeys.PRED].shape == (6, 16)


def _tiny_unet_net() -> VoCoNet:
    torch.manual_seed(0)
    return VoCoNet(UNetEncoder(features=(2, 2, 4, 4, 8, 2)), hidden_dim=8, out_dim=4)


def test_loss_terms_handler_with_default_decollate():
    net = _tiny_unet_net()
    crit = VoCoCriterion("paper")
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=1,
        train_data_loader=_voco_loader(1),
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.01),
        loss_function=crit,
        prepare_batch=VoCoPrepareBatch(),
        train_handlers=[LossTermsHandler(crit)],
    )
    trainer.run()
    out = trainer.state.output
    items = out if isinstance(out, list) else [out]
    assert all("loss_pred" in item and "loss_reg" in item for item in items)


# ----------------------------------------------------------------------------------------------------------------
# metrics
# ----------------------------------------------------------------------------------------------------------------


def test_top1_hits_with_ties():
    n = 6
    tied = torch.tensor([0.25, 0.25, 0.25, 0.25, 0.0, 0.0])  # a crop aligned on 4 cells
    labels = tied.expand(n, n)[None].clone()  # (1, k=6, n=6)
    logits = torch.full((1, n, n), 0.1)
    for j in range(n):
        logits[0, j, j] = 0.9  # crop j points at base j
    hits = top1_hits(logits, labels)
    assert hits.dtype == torch.bool and hits.shape == (1, n)
    assert hits[0].tolist() == [True, True, True, True, False, False]
    # one clear maximum: only that base counts
    labels = torch.tensor([[[0.6, 0.3, 0.1, 0.0]]])
    assert top1_hits(torch.tensor([[[0.2, 0.9, 0.1, 0.0]]]), labels).tolist() == [[False]]
    assert top1_hits(torch.tensor([[[0.8, 0.9, 0.1, 0.95]]]), labels).tolist() == [[False]]
    assert top1_hits(torch.tensor([[[0.99, 0.9, 0.1, 0.95]]]), labels).tolist() == [[True]]


def test_chance_top1_hand_values():
    labels = torch.tensor([[[0.25, 0.25, 0.25, 0.25, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0, 0.0, 0.0]]])
    assert chance_top1(labels).item() == pytest.approx((4 / 6 + 1 / 6) / 2)
    labels = torch.tensor([[[0.5, 0.5, 0.0, 0.0]], [[0.7, 0.1, 0.1, 0.1]]])
    assert chance_top1(labels).item() == pytest.approx((2 / 4 + 1 / 4) / 2)


def test_effective_rank():
    n, c = 4, 7
    orthogonal = torch.zeros(1, n, c)
    for i in range(n):
        orthogonal[0, i, i + 2] = 3.0
    assert effective_rank(orthogonal).item() == pytest.approx(n, rel=1e-9)
    identical = _randn(1, 1, c, seed=7).expand(1, n, c)
    assert effective_rank(identical).item() == pytest.approx(1.0, abs=1e-6)
    # diag(2, 1): p = (2/3, 1/3)
    two = torch.tensor([[[2.0, 0.0], [0.0, 1.0]]])
    p = np.array([2 / 3, 1 / 3])
    assert effective_rank(two).item() == pytest.approx(float(np.exp(-(p * np.log(p)).sum())), rel=1e-9)
    random = _randn(3, 5, 9, seed=8)
    ranks = effective_rank(random)
    assert ranks.shape == (3,)
    for b in range(3):
        s = np.linalg.svd(random[b].numpy(), compute_uv=False)
        q = s / s.sum()
        assert ranks[b].item() == pytest.approx(float(np.exp(-(q * np.log(q)).sum())), rel=1e-9)


def ref_metrics(features: torch.Tensor, labels: torch.Tensor) -> tuple[list[float], list[float], list[float]]:
    """Per-crop hits, per-entry |l - y| and per-volume effective ranks, by loops."""
    b_, k, n = labels.shape
    hits, errors, ranks = [], [], []
    for b in range(b_):
        base, random = _volume_crops(features, b, n, k)
        for j in range(k):
            logits = [_cos(random[j], base[i]) for i in range(n)]
            best = max(range(n), key=lambda i, lg=logits: lg[i])
            row = [float(v) for v in labels[b, j]]
            hits.append(1.0 if row[best] == max(row) else 0.0)
            errors.extend(abs(lg - y) for lg, y in zip(logits, row, strict=True))
        s = np.linalg.svd(torch.stack(base).double().numpy(), compute_uv=False)
        q = s / s.sum()
        ranks.append(float(np.exp(-(q * np.log(q)).sum())))
    return hits, errors, ranks


def test_metrics_update_compute_manually():
    b_, k, n = 2, 3, 4
    features, labels = _randn(b_ * (n + k), 5, seed=9), _labels(b_, k, n, seed=10)
    labels[0, 0] = torch.tensor([0.25, 0.25, 0.25, 0.25], dtype=DT)  # a tie row
    hits, errors, ranks = ref_metrics(features, labels)
    chance = [sum(v == max(row) for v in row) / n for row in labels.reshape(-1, n).tolist()]
    assert chance[0] == 1.0  # the tie row
    for metric, ref in (
        (PositionTop1Accuracy(), hits),
        (PositionMAE(), errors),
        (BaseEffectiveRank(), ranks),
        (ChanceTop1(), chance),
    ):
        with pytest.raises(NotComputableError):
            metric.compute()
        metric.update((features, labels))
        assert metric.compute() == pytest.approx(sum(ref) / len(ref), rel=1e-9)
        metric.reset()
        with pytest.raises(NotComputableError):
            metric.compute()
    assert 0 < sum(hits) < len(hits)  # the accuracy test is not trivially 0 or 1


def _brute_force_auc(logits: list[float], overlaps: list[bool]) -> float:
    """Mann-Whitney AUC by enumerating every (overlapped, not overlapped) pair of bases."""
    pos = [lg for lg, o in zip(logits, overlaps, strict=True) if o]
    neg = [lg for lg, o in zip(logits, overlaps, strict=True) if not o]
    if not pos or not neg:
        return math.nan
    return sum(1.0 if p > q else 0.5 if p == q else 0.0 for p in pos for q in neg) / (len(pos) * len(neg))


def test_position_auc_matches_brute_force():
    b_, k, n = 2, 5, 6
    logits, labels = _randn(b_, k, n, seed=12), _labels(b_, k, n, seed=13)
    logits[0, 1, :3] = 0.3  # ties between an overlapped and a free base count one half
    labels[1, 2] = 1.0 / n  # overlaps every base: no AUC
    auc = position_auc(logits, labels)
    for b in range(b_):
        for j in range(k):
            ref = _brute_force_auc(logits[b, j].tolist(), (labels[b, j] > 0).tolist())
            if math.isnan(ref):
                assert math.isnan(float(auc[b, j])) and (b, j) == (1, 2)
            else:
                assert float(auc[b, j]) == pytest.approx(ref, abs=1e-12)
    defined = auc[~auc.isnan()]
    assert bool(((defined > 0) & (defined < 1)).any())  # not trivially 0 or 1


def test_position_auc_is_invariant_to_calibration_and_extreme_on_perfect_ranking():
    labels = _labels(1, 4, 5, seed=14)
    perfect = labels + 0.0  # logits equal to the labels rank every overlapped base first
    assert torch.all(position_auc(perfect, labels) == 1.0)
    assert torch.all(position_auc(-perfect, labels) == 0.0)
    logits = _randn(1, 4, 5, seed=15)
    assert torch.equal(position_auc(logits, labels), position_auc(3 * torch.tanh(logits) - 1, labels))


def test_position_auc_metric_skips_undefined_crops():
    b_, k, n = 2, 3, 4
    features, labels = _randn(b_ * (n + k), 5, seed=16), _labels(b_, k, n, seed=17)
    labels[0, 0] = 0.25  # undefined
    refs = []
    for b in range(b_):
        base, random = _volume_crops(features, b, n, k)
        for j in range(k):
            ref = _brute_force_auc([_cos(random[j], base[i]) for i in range(n)], (labels[b, j] > 0).tolist())
            if not math.isnan(ref):
                refs.append(ref)
    assert 0 < len(refs) < b_ * k
    metric = PositionAUC()
    metric.update((features, labels))
    assert metric.compute() == pytest.approx(sum(refs) / len(refs), rel=1e-9)
    metric.reset()
    with pytest.raises(NotComputableError):
        metric.compute()
    metric.update((features, torch.full_like(labels, 1.0 / n)))  # every crop overlaps every base
    assert math.isnan(metric.compute())


class _FlattenLinear(nn.Module):
    """A per-crop linear map, so that the features of a crop do not depend on the batch."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lin(x.flatten(1))


def _evaluator_data(seed: int = 11) -> list[dict]:
    gen = torch.Generator().manual_seed(seed)
    items = []
    for _ in range(3):  # 3 volumes, batches of 2 and 1
        label = torch.rand(2, 4, generator=gen)
        label[label < 0.4] = 0
        label[:, 0] += 0.1
        items.append({"image": torch.randn(6, 1, 2, 2, 2, generator=gen), "label": label / label.sum(-1, keepdim=True)})
    items[1]["label"][0] = torch.tensor([0.25, 0.25, 0.25, 0.25])
    return items


def _run_evaluator(decollate: bool) -> tuple[dict, list[dict], nn.Module]:
    items = _evaluator_data()
    net = _FlattenLinear()
    evaluator = SupervisedEvaluator(
        device="cpu",
        val_data_loader=torch.utils.data.DataLoader(items, batch_size=2, shuffle=False),
        network=net,
        prepare_batch=VoCoPrepareBatch(),
        key_val_metric={"top1": PositionTop1Accuracy()},
        additional_metrics={"mae": PositionMAE(), "rank": BaseEffectiveRank(), "chance": ChanceTop1()},
        decollate=decollate,
    )
    evaluator.run()
    return evaluator.state.metrics, items, net


def _check_evaluator_metrics(metrics: dict, items: list[dict], net: nn.Module) -> None:
    hits, errors, ranks = [], [], []
    chance = [sum(v == max(row) for v in row) / 4 for item in items for row in item["label"].tolist()]
    assert metrics["chance"] == pytest.approx(sum(chance) / len(chance), rel=1e-9)
    with torch.no_grad():
        for item in items:  # one volume at a time
            h, e, r = ref_metrics(net(item["image"]).double(), item["label"][None].double())
            hits += h
            errors += e
            ranks += r
    assert len(hits) == 3 * 2 and len(ranks) == 3
    assert metrics["top1"] == pytest.approx(sum(hits) / len(hits), rel=1e-6)
    assert metrics["mae"] == pytest.approx(sum(errors) / len(errors), rel=1e-5)
    assert metrics["rank"] == pytest.approx(sum(ranks) / len(ranks), rel=1e-5)


def test_metrics_in_supervised_evaluator():
    metrics, items, net = _run_evaluator(decollate=False)
    _check_evaluator_metrics(metrics, items, net)


def test_metrics_in_supervised_evaluator_default_decollate():
    metrics, items, net = _run_evaluator(decollate=True)
    _check_evaluator_metrics(metrics, items, net)


def test_metrics_accept_dict_output():
    b_, k, n = 1, 2, 4
    features, labels = _randn(b_ * (n + k), 5, seed=12), _labels(b_, k, n, seed=13)
    metric = PositionMAE()
    engine = SimpleNamespace(state=SimpleNamespace(output={CommonKeys.PRED: features, CommonKeys.LABEL: labels}))
    metric.iteration_completed(engine)
    _, errors, _ = ref_metrics(features, labels)
    assert metric.compute() == pytest.approx(sum(errors) / len(errors), rel=1e-9)


def test_teacher_copy_is_independent():
    """training_network('official') deep-copies the student: changing one does not change the other."""
    net = _tiny_unet_net()
    pair = training_network(copy.deepcopy(net), "official")
    with torch.no_grad():
        next(pair.student.parameters()).add_(1.0)
    assert not torch.equal(next(pair.student.parameters()), next(pair.teacher.parameters()))


@pytest.mark.parametrize(
    "steps, per_epoch, epochs", [(1, 1000, 1), (3, 2, 2), (4, 2, 2), (7, 3, 3), (100000, 1000, 100)]
)
def test_epochs_for_holds_every_step(steps, per_epoch, epochs):
    assert epochs_for(steps, per_epoch) == epochs


@pytest.mark.parametrize("steps, per_epoch", [(0, 2), (3, 0), (-1, 1)])
def test_epochs_for_rejects_non_positive_counts(steps, per_epoch):
    with pytest.raises(ValueError, match="at least 1"):
        epochs_for(steps, per_epoch)


def tiny_trainer(max_steps: int, epoch_length: int, max_epochs: int, val_interval: int) -> tuple:
    """A linear-regression SupervisedTrainer with MONAI's periodic ValidationHandler and a LastStepHandler;
    returns it with a record of the epochs completed and of the trainer step at each validation."""
    torch.manual_seed(0)
    network = nn.Linear(2, 1)
    batches = [{"image": torch.randn(1, 2), "label": torch.randn(1, 1)} for _ in range(5)]
    evaluator = SupervisedEvaluator(device="cpu", val_data_loader=batches[:1], network=network)
    trainer = SupervisedTrainer(
        device="cpu",
        max_epochs=max_epochs,
        epoch_length=epoch_length,
        train_data_loader=batches,
        network=network,
        optimizer=torch.optim.SGD(network.parameters(), lr=0.1),
        loss_function=nn.MSELoss(),
        train_handlers=[
            LastStepHandler(max_steps, evaluator, val_interval),
            ValidationHandler(validator=evaluator, interval=val_interval, epoch_level=True),
        ],
    )
    record = {"epochs": [], "validated_at": [], "completed": 0}
    trainer.add_event_handler(Events.EPOCH_COMPLETED, lambda e: record["epochs"].append(e.state.epoch))
    trainer.add_event_handler(Events.COMPLETED, lambda e: record.__setitem__("completed", record["completed"] + 1))
    evaluator.add_event_handler(Events.COMPLETED, lambda e: record["validated_at"].append(trainer.state.iteration))
    return trainer, record


@pytest.mark.parametrize(
    "max_steps, epoch_length, max_epochs, val_interval, epochs, validated_at",
    [
        (7, 3, 100, 1, [1, 2, 3], [3, 6, 7]),  # the last epoch has one step, and is validated
        (5, 2, 1, 10, [1, 2, 3], [5]),  # extended past max_epochs; validated at the end only
        (4, 2, 2, 2, [1, 2], [4]),  # the periodic validation covers the end: not twice
        (3, 20, 1, 1, [1], [3]),  # one short epoch
    ],
)
def test_last_step_handler_trains_exactly_max_steps_and_validates_the_end(
    max_steps, epoch_length, max_epochs, val_interval, epochs, validated_at
):
    trainer, record = tiny_trainer(max_steps, epoch_length, max_epochs, val_interval)
    trainer.run()
    assert trainer.state.iteration == max_steps
    assert record == {"epochs": epochs, "validated_at": validated_at, "completed": 1}


def test_last_step_handler_resumes_mid_epoch_and_stops_a_finished_run():
    trainer, _ = tiny_trainer(4, 3, 100, 1)
    trainer.run()
    resumed, record = tiny_trainer(7, 3, 100, 1)
    resumed.load_state_dict(trainer.state_dict())  # a checkpoint at step 4, in the second epoch
    resumed.run()
    assert resumed.state.iteration == 7 and record == {"epochs": [2, 3], "validated_at": [6, 7], "completed": 1}
    finished, record = tiny_trainer(7, 3, 100, 1)
    finished.load_state_dict(resumed.state_dict())
    finished.run()
    assert finished.state.iteration == 7 and record == {"epochs": [], "validated_at": [], "completed": 1}


def test_last_step_handler_rejects_non_positive_counts():
    with pytest.raises(ValueError, match="at least 1"):
        LastStepHandler(0)
    with pytest.raises(ValueError, match="at least 1"):
        LastStepHandler(5, val_interval=0)


# ----------------------------------------------------------------------------------------------------------------
# 2D: the same glue, losses and metrics on radiograph crops
# ----------------------------------------------------------------------------------------------------------------


def _image_batch(num: int = 2) -> dict:
    """A collated batch of ``num`` 2D crop stacks (4 bases of a 2x2 grid + 3 random crops of 32x32)."""
    crop = VoCoCropd(keys="image", region_size=(64, 64), grid=(2, 2), roi_size=(32, 32), num_crops=3)
    crop.set_random_state(0)
    gen = torch.Generator().manual_seed(1)
    items = [crop({"image": torch.rand(1, 70, 60, generator=gen)}) for _ in range(num)]
    return torch.utils.data.default_collate(items)


def test_2d_batch_through_the_network_gives_the_reference_loss_and_metrics():
    """2D crops flatten like 3D ones; the losses and position metrics see only (B, k, n) labels and (N, C)
    features, so they equal the same per-crop reference loops as in 3D."""
    batch = _image_batch(2)
    assert batch["image"].shape == (2, 7, 1, 32, 32)
    inputs, labels = VoCoPrepareBatch()(batch, device="cpu")
    assert inputs.shape == (14, 1, 32, 32) and labels.shape == (2, 3, 4)
    torch.manual_seed(0)
    net = VoCoNet(SwinEncoder(feature_size=12, window_size=4, spatial_dims=2), hidden_dim=32, out_dim=16)
    features = net(inputs)
    loss = VoCoCriterion("paper")(features, labels)
    pred, reg = ref_paper_loss(features.detach().double(), labels.double())
    assert loss.item() == pytest.approx(pred + reg, rel=1e-5)
    loss.backward()
    assert all(p.grad is not None for p in net.encoder.parameters())
    hits, errors, _ = ref_metrics(features.detach().double(), labels.double())
    for metric, expected in ((PositionTop1Accuracy(), hits), (PositionMAE(), errors)):
        metric.update((features.detach(), labels))
        assert metric.compute() == pytest.approx(sum(expected) / len(expected), rel=1e-5)
