"""The label-efficiency protocol's third task, multi-label classification (voco_cxr14_cls): patient-level budgets,
the knn and logistic probes on 0/1 targets per finding, per-finding AUCs with the unscorable findings named, and
the protocol run through the bundle on the ChestX-ray14-style demo set."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import BUNDLES, REPO
from voco_components.apps import demo_cxr, label_efficiency
from voco_components.apps.cxr14 import FINDINGS
from voco_components.evaluation.label_splits import patient_sample_splits
from voco_components.evaluation.probes import MultiLabelLogisticProbe, knn_multilabel_scores
from voco_components.networks import SwinEncoder

PROTOCOLS = BUNDLES / "voco_cxr14_cls" / "configs" / "label_efficiency"


def multilabel_pool(images_per_patient: dict[str, int]) -> list[dict]:
    return [
        {"image": f"{patient}_{i:03d}.png", "label": [i % 2, 1 - i % 2], "patient": patient}
        for patient, count in images_per_patient.items()
        for i in range(count)
    ]


def test_patient_budgets_take_whole_patients_nested_and_reproducibly():
    counts = {f"p{i:02d}": 1 + i % 3 for i in range(20)}  # 1 to 3 images per patient
    pool = multilabel_pool(counts)
    splits = patient_sample_splits(pool, [2, 5, 20], "patients", seed=3)
    patients = {budget: {image.split("_")[0] for image in images} for budget, images in splits.items()}
    assert {b: len(p) for b, p in patients.items()} == {"2": 2, "5": 5, "20": 20}
    for budget, images in splits.items():  # every image of a chosen patient, none of the others
        assert sorted(images) == sorted(e["image"] for e in pool if e["patient"] in patients[budget])
    assert patients["2"] <= patients["5"] <= patients["20"]
    assert splits == patient_sample_splits(pool, [2, 5, 20], "patients", seed=3)
    shuffled = patient_sample_splits(pool[::-1], [2, 5, 20], "patients", seed=3)  # the datalist's order is irrelevant
    assert {b: set(images) for b, images in shuffled.items()} == {b: set(images) for b, images in splits.items()}
    assert patient_sample_splits(pool, [5], "patients", seed=4)["5"] != splits["5"]
    # fractions of the 20 patients, rounded half up, at least one
    fractions = patient_sample_splits(pool, [0.01, 0.125, 0.5], "fraction", seed=3)
    sizes = {b: len({image.split("_")[0] for image in images}) for b, images in fractions.items()}
    assert sizes == {"0.01": 1, "0.125": 3, "0.5": 10}


def test_a_budget_every_split_seed_fills_alike_is_run_once():
    """With the whole pool labelled every split seed trains on the same images: one run, not ten copies whose
    identical differences would pass the paired test."""
    pool = multilabel_pool({f"p{i}": 2 for i in range(6)})
    splits = {"splits": {str(s): {"budgets": patient_sample_splits(pool, [2, 6], "patients", s)} for s in range(4)}}
    assert label_efficiency.distinct_split_seeds(splits, "6") == [0]
    chosen = [sorted(splits["splits"][str(s)]["budgets"]["2"]) for s in range(4)]
    expected = [s for s in range(4) if chosen[s] not in chosen[:s]]
    assert label_efficiency.distinct_split_seeds(splits, "2") == expected and len(expected) > 1


@pytest.mark.parametrize(("budgets", "unit"), [([0], "patients"), ([21], "patients"), ([1.5], "patients")])
def test_patient_budgets_outside_the_pool_are_refused(budgets, unit):
    with pytest.raises(ValueError, match="whole number from 1 to 20"):
        patient_sample_splits(multilabel_pool({f"p{i}": 1 for i in range(20)}), budgets, unit, seed=0)


def test_knn_scores_are_the_share_of_positive_neighbours():
    generator = torch.Generator().manual_seed(0)
    train, query = torch.randn(12, 5, generator=generator), torch.randn(4, 5, generator=generator)
    targets = (torch.rand(12, 3, generator=generator) > 0.5).long()
    scores = knn_multilabel_scores(train, targets, query, k=4)
    for m in range(4):
        cosine = [float(query[m] @ train[n] / (query[m].norm() * train[n].norm())) for n in range(12)]
        nearest = sorted(range(12), key=lambda n: -cosine[n])[:4]
        expected = [sum(int(targets[n, c]) for n in nearest) / 4 for c in range(3)]
        np.testing.assert_allclose(scores[m].numpy(), expected)


def newton_logistic(x: np.ndarray, y: np.ndarray, decay: float) -> tuple[np.ndarray, float]:
    """Weights and bias minimising mean BCE + decay/2 ||w||^2 (bias not penalised), by Newton's method."""
    n, d = x.shape
    theta = np.zeros(d + 1)
    design = np.hstack([x, np.ones((n, 1))])
    penalty = np.diag([decay] * d + [0.0])
    for _ in range(50):
        p = 1 / (1 + np.exp(-design @ theta))
        gradient = design.T @ (p - y) / n + penalty @ theta
        hessian = design.T @ (design * (p * (1 - p))[:, None]) / n + penalty
        theta -= np.linalg.solve(hessian, gradient)
    return theta[:d], theta[d]


def test_multilabel_logistic_probe_is_one_logistic_regression_per_class():
    """The joint loss is the mean BCE over classes, so each class's fit is a binary logistic regression on the
    standardised features whose penalty is the weight decay times the number of classes."""
    rng = np.random.default_rng(0)
    features = rng.normal(size=(40, 4)) * [1.0, 3.0, 0.5, 2.0] + [0.0, 1.0, -2.0, 5.0]
    targets = (features[:, :3] + rng.normal(size=(40, 3)) > [0.0, 1.0, -2.0]).astype(int)
    query = rng.normal(size=(6, 4))
    probe = MultiLabelLogisticProbe(3, weight_decay=0.1).fit(torch.tensor(features), torch.tensor(targets))
    scale = features.std(axis=0)
    standardised, query_standardised = (features - features.mean(0)) / scale, (query - features.mean(0)) / scale
    for c in range(3):
        w, b = newton_logistic(standardised, targets[:, c], decay=0.1 * 3)
        expected = 1 / (1 + np.exp(-(query_standardised @ w + b)))
        np.testing.assert_allclose(probe.predict_proba(torch.tensor(query))[:, c].numpy(), expected, atol=1e-5)
    decisions = probe.predict(torch.tensor(query))  # each class decided on its own at probability 0.5
    assert torch.equal(decisions, (probe.predict_proba(torch.tensor(query)) >= 0.5).long())


def pair_count_auc(scores: list[float], targets: list[int]) -> float:
    positives = [s for s, t in zip(scores, targets, strict=True) if t == 1]
    negatives = [s for s, t in zip(scores, targets, strict=True) if t == 0]
    wins = sum(1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(positives, negatives))
    return wins / (len(positives) * len(negatives))


def test_rows_name_a_finding_the_test_set_cannot_score_and_leave_it_out_of_the_mean(tmp_path):
    p = label_efficiency.load_protocol(PROTOCOLS / "cpu_demo_protocol.json")
    run = label_efficiency.Run("voco", "knn", "3", 0, 0)
    scores = np.array([[0.9, 0.2, 0.5], [0.4, 0.8, 0.5], [0.3, 0.1, 0.7], [0.6, 0.3, 0.2]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 0], [1, 1, 0]])  # the third class has no positive
    rows, absent = label_efficiency._multilabel_rows(p, run, scores, targets, ["a", "b", "c"])
    by_class = {r["class"]: r["value"] for r in rows if r["metric"] == "auc"}
    expected = {name: pair_count_auc(scores[:, c].tolist(), targets[:, c].tolist()) for c, name in enumerate("ab")}
    assert by_class == pytest.approx(expected) and absent == {"c": "no positive case"}
    (mean,) = [r["value"] for r in rows if r["metric"] == "mean_auc"]
    assert mean == pytest.approx(np.mean(list(expected.values())))


def test_shipped_multilabel_protocols_load_with_patient_budgets(tmp_path):
    for path in sorted(PROTOCOLS.glob("*_protocol.json")):
        p = label_efficiency.load_protocol(path)
        assert p.task == "multilabel" and p.budget_unit in ("patients", "fraction"), path
    wrong = tmp_path / "protocol.json"
    wrong.write_text(
        json.dumps({**json.loads((PROTOCOLS / "cpu_demo_protocol.json").read_text()), "budget_unit": "volumes"})
    )
    with pytest.raises(ValueError, match=r"protocol.json: budget_unit for multilabel must be one of \('patients'"):
        label_efficiency.load_protocol(wrong)


@pytest.fixture(scope="module")
def small_cxr_demo(tmp_path_factory) -> Path:
    return Path(demo_cxr.demo_cxr_dir(tmp_path_factory.mktemp("demo_cxr"), patients=40))


@pytest.mark.slow  # about a minute on 2 cores: two encoders over the demo images, 8 probe fits, 2 bundle trainings
def test_multilabel_protocol_runs_feature_and_bundle_probes_on_the_demo(tmp_path, small_cxr_demo, monkeypatch):
    monkeypatch.chdir(REPO)
    torch.manual_seed(1)
    encoder = tmp_path / "encoder.pt"
    torch.save(SwinEncoder(spatial_dims=2, feature_size=12, window_size=4).state_dict(), encoder)
    protocol = json.loads((PROTOCOLS / "cpu_demo_protocol.json").read_text())
    protocol.update(
        dataset_dir=str(small_cxr_demo),
        inits={"voco": str(encoder), "scratch": None},
        overrides={"num_workers": 0, "spatial_size": [64, 64], "batch_size": 4, "val_batch_size": 8},
        probes=["knn", "linear", "frozen"],
        budgets=[2, 4],
        split_seeds=[0],
        steps={"frozen": 2},
    )
    protocol.pop("make_missing")
    path = tmp_path / "protocol.json"
    path.write_text(json.dumps(protocol))
    results = label_efficiency.run_protocol(path, tmp_path / "out")
    rows = list(csv.DictReader(open(results)))
    means = [r for r in rows if r["metric"] == "mean_auc"]
    assert len(means) == 2 * 3 * 2  # inits x probes x budgets
    assert all(0.0 <= float(r["value"]) <= 1.0 for r in means)
    splits = json.loads((tmp_path / "out" / "splits.json").read_text())
    datalist = json.loads((small_cxr_demo / "datalist.json").read_text())
    assert splits["test"] == [e["image"] for e in datalist["testing"]]
    patient_of = {e["image"]: e["patient"] for e in datalist["training"] + datalist["validation"]}
    assert {b: len({patient_of[i] for i in images}) for b, images in splits["splits"]["0"]["budgets"].items()} == {
        "2": 2,
        "4": 4,
    }
    # the bundle probe's AUCs are those of its own predictions file, finding by finding
    run = tmp_path / "out" / "runs" / "voco" / "frozen" / "budget_4" / "split0_train0"
    predictions = json.loads((run / "eval" / "predictions.json").read_text())
    assert [Path(i["image"]).name for i in predictions["images"]] == [Path(i).name for i in splits["test"]]
    result = json.loads((run / "result.json").read_text())
    for finding in FINDINGS:
        scores = [i["probabilities"][finding] for i in predictions["images"]]
        targets = [i["labels"][finding] for i in predictions["images"]]
        found = [r["value"] for r in result["rows"] if r["class"] == finding]
        if finding in result["settings"]["absent"]:
            assert not found and len(set(targets)) == 1
        else:
            assert found == [pytest.approx(pair_count_auc(scores, targets))]
