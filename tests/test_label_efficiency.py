"""Label-efficiency protocol: nested seeded splits, paired statistics, the resumable runner, the probe overlays."""

from __future__ import annotations

import csv
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from ignite.engine import Events
from monai.engines import SupervisedTrainer

from conftest import BUNDLES, REPO, bundle_workflow
from voco_components.apps import demo_covid, label_efficiency
from voco_components.evaluation.label_splits import patient_splits, per_class_count, volume_splits
from voco_components.evaluation.paired_stats import bootstrap_ci, holm, mean_sd, sign_flip_test
from voco_components.networks.encoders import SwinClassifier, SwinEncoder, SwinLinearProbe
from voco_components.networks.freezing import freeze
from voco_components.networks.weights import load_pretrained

TINY_ENCODER = {"feature_size": 12, "window_size": 4}


def pool_entries(patients_per_class: dict[int, int], scans: int = 2) -> list[dict]:
    """Entries of ``scans`` scans for each patient, ``patients_per_class[label]`` patients per class."""
    return [
        {"image": f"c{label}_p{p}_s{s}.nii.gz", "label": label, "patient": f"{label}-{p}"}
        for label, count in patients_per_class.items()
        for p in range(count)
        for s in range(scans)
    ]


def patients_of(images: list[str]) -> set[str]:
    return {image.rsplit("_s", 1)[0] for image in images}


# ---------------------------------------------------------------- splits


def test_stratified_splits_are_nested_per_class_and_keep_patients_together():
    entries = pool_entries({0: 13, 1: 13, 2: 14})
    budgets = [1, 2, 4, 8]
    splits, redraws = patient_splits(entries, budgets, "patients_per_class", seed=3)
    assert redraws == 0
    for small, large in itertools.pairwise(budgets):
        assert set(splits[str(small)]) < set(splits[str(large)])
    for budget in budgets:
        patients = patients_of(splits[str(budget)])
        assert {c: sum(p.startswith(f"c{c}_") for p in patients) for c in range(3)} == {0: budget, 1: budget, 2: budget}
        assert len(splits[str(budget)]) == 2 * len(patients)  # both scans of every chosen patient
    again, _ = patient_splits(entries, budgets, "patients_per_class", seed=3)
    other, _ = patient_splits(entries, budgets, "patients_per_class", seed=4)
    assert again == splits and other != splits


def test_fractions_map_to_per_class_counts_of_at_least_one():
    assert [per_class_count(f, 13, "fraction") for f in (0.01, 0.05, 0.1, 0.25, 1.0)] == [1, 1, 1, 3, 13]
    assert per_class_count(0.5, 5, "fraction") == 3  # 2.5 rounds half up
    assert per_class_count(20, 13, "patients_per_class") == 13
    entries = pool_entries({0: 40, 1: 20, 2: 4})
    splits, _ = patient_splits(entries, [0.1, 0.5, 1.0], "fraction", seed=0)
    counts = {key: [sum(p.startswith(f"c{c}_") for p in patients_of(v)) for c in range(3)] for key, v in splits.items()}
    assert counts == {"0.1": [4, 2, 1], "0.5": [20, 10, 2], "1": [40, 20, 4]}


def test_unstratified_split_missing_a_class_is_redrawn():
    entries = pool_entries({0: 10, 1: 10, 2: 1}, scans=1)
    seed = next(s for s in range(100) if patient_splits(entries, [0.2], "fraction", s, stratify=False)[1] > 0)
    splits, redraws = patient_splits(entries, [0.2, 0.5], "fraction", seed, stratify=False)
    # reference: draw permutations of the sorted patients until the first 4 (round(0.2 * 21)) hold all classes
    patients = sorted({e["patient"] for e in entries})
    rng = np.random.default_rng(seed)
    expected_redraws, order = -1, []
    while expected_redraws < 0 or {p.split("-")[0] for p in order[:4]} != {"0", "1", "2"}:
        order = [patients[i] for i in rng.permutation(len(patients))]
        expected_redraws += 1
    assert redraws == expected_redraws > 0
    assert patients_of(splits["0.2"]) == {f"c{p.replace('-', '_p')}" for p in order[:4]}
    assert set(splits["0.2"]) < set(splits["0.5"]) and len(splits["0.5"]) == 11
    with pytest.raises(ValueError, match="no permutation"):
        patient_splits(pool_entries({0: 10, 1: 10, 2: 1}), [0.05], "fraction", 0, stratify=False, max_redraws=0)


def test_volume_splits_are_prefixes_of_one_permutation():
    images = [f"img{i:02d}.nii.gz" for i in range(24)]
    splits = volume_splits(images, [1, 2, 4, 8, 12, 24], seed=0)
    order = [images[i] for i in np.random.default_rng(0).permutation(24)]
    assert all(splits[str(b)] == order[:b] for b in (1, 2, 4, 8, 12, 24))
    with pytest.raises(ValueError, match="from 1 to 24"):
        volume_splits(images, [25], seed=0)


# ---------------------------------------------------------------- statistics


def test_statistics_against_hand_computed_values():
    mean, sd = mean_sd([0.5, 0.7, 0.6])
    assert mean == pytest.approx(0.6) and sd == pytest.approx(0.1)
    assert np.isnan(mean_sd([0.4])[1])
    # exact sign-flip: the 8 sign patterns of (0.3, -0.1, 0.2) give |sums| 0.4 0 0.6 0.2 0.2 0.6 0 0.4 -> 4 of 8 >= 0.4
    assert sign_flip_test([0.3, -0.1, 0.2]) == pytest.approx(0.5)
    assert sign_flip_test([0.1, 0.2, 0.3]) == pytest.approx(0.25)  # only the two all-equal patterns reach 0.6
    assert sign_flip_test([0.0, 0.0]) == 1.0
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.2, float("nan"), 0.01]) == pytest.approx([0.2, float("nan"), 0.02], nan_ok=True)
    # the exact bootstrap distribution of 3 values has 27 equally likely resamples: the lowest mean (0.2) and
    # the highest (0.9) each have probability 1/27 > 2.5 %, so the 95 % interval is [0.2, 0.9]
    values = [0.2, 0.5, 0.9]
    low, high = bootstrap_ci(values, num_resamples=20000, seed=1)
    assert low == pytest.approx(0.2) and high == pytest.approx(0.9)
    low, high = bootstrap_ci(values, level=0.5, num_resamples=20000, seed=1)
    exact = np.quantile([np.mean(c) for c in itertools.product(values, repeat=3)], [0.25, 0.75])
    assert low == pytest.approx(exact[0], abs=0.05) and high == pytest.approx(exact[1], abs=0.05)
    assert bootstrap_ci(values, seed=5) == bootstrap_ci(values, seed=5)
    assert bootstrap_ci([0.4, 0.4]) == (0.4, 0.4)


def write_results(path: Path, cells: dict[tuple[str, str], list[float]]) -> None:
    """A results.csv with one run-level balanced_accuracy per (init, budget) and split seed 0, 1, 2."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(label_efficiency.RESULT_COLUMNS)
        for (init, budget), values in cells.items():
            for seed, value in enumerate(values):
                writer.writerow(
                    ["classification", init, "knn", budget, seed, 0, "all", "all", "balanced_accuracy", value]
                )
                writer.writerow(["classification", init, "knn", budget, seed, 0, "x.nii.gz", "all", "correct", 1.0])


def test_summarize_table_from_a_tiny_results_csv(tmp_path):
    write_results(
        tmp_path / "results.csv",
        {
            ("scratch", "1"): [0.3, 0.4, 0.5],
            ("voco", "1"): [0.6, 0.3, 0.7],  # differences 0.3 -0.1 0.2: p 0.5
            ("scratch", "2"): [0.5, 0.5, 0.5],
            ("voco", "2"): [0.6, 0.7, 0.8],  # differences 0.1 0.2 0.3: p 0.25
        },
    )
    label_efficiency.summarize(tmp_path)
    table = {
        (e["init"], e["budget"]): e
        for e in label_efficiency.summary_table(list(csv.DictReader(open(tmp_path / "results.csv"))))
    }
    assert set(table) == {("scratch", "1"), ("voco", "1"), ("scratch", "2"), ("voco", "2")}
    voco1, voco2 = table[("voco", "1")], table[("voco", "2")]
    # deviations from 0.5333: 0.0667, -0.2333, 0.1667 -> squares sum to 0.26 / 3, over n - 1 = 2: 0.13 / 3
    assert voco1["mean"] == pytest.approx(1.6 / 3) and voco1["sd"] == pytest.approx(np.sqrt(0.13 / 3))
    assert voco1["diff"] == pytest.approx(0.4 / 3) and voco1["p"] == pytest.approx(0.5) and voco1["n_pairs"] == 3
    assert voco2["diff"] == pytest.approx(0.2) and voco2["p"] == pytest.approx(0.25)
    # Holm over the two budgets: 0.25 * 2 = 0.5, then max(0.5, 0.5 * 1) = 0.5
    assert voco1["p_holm"] == pytest.approx(0.5) and voco2["p_holm"] == pytest.approx(0.5)
    assert (voco1["ci_low"], voco1["ci_high"]) == bootstrap_ci([0.6, 0.3, 0.7], seed=0)
    text = (tmp_path / "table.md").read_text()
    assert "| voco | knn | 1 | 3 | 0.533 ± 0.208 |" in text and "+0.133 (3) | 0.500 | 0.500 |" in text
    assert "| scratch | knn | 2 | 3 | 0.500 ± 0.000 | [0.500, 0.500] | – |" in text
    pytest.importorskip("matplotlib")
    assert (tmp_path / "curve.png").stat().st_size > 1000


# ---------------------------------------------------------------- freezing


def test_frozen_encoder_stays_frozen_and_in_eval_mode_under_a_monai_trainer():
    torch.manual_seed(0)
    network = freeze(SwinClassifier(num_classes=3, dropout=0.5, **TINY_ENCODER), ["swinViT"])
    before = {k: v.clone() for k, v in network.state_dict().items()}
    data = [{"image": torch.rand(1, 1, 32, 32, 32), "label": torch.tensor([i % 3])} for i in range(3)]
    trainable = [p for p in network.parameters() if p.requires_grad]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=network,
        optimizer=torch.optim.SGD(trainable, lr=1.0),
        loss_function=torch.nn.CrossEntropyLoss(),
    )
    modes = []
    trainer.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: modes.append((network.training, {m.training for m in network.swinViT.modules()})),
    )
    trainer.run()
    assert modes == [(True, {False})] * 3  # the trainer called network.train(); the encoder stayed in eval
    assert all(not p.requires_grad for p in network.swinViT.parameters())
    after = network.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith("swinViT."))
    assert not torch.equal(before["head.weight"], after["head.weight"])
    with pytest.raises(ValueError, match="not submodules"):
        freeze(network, ["decoder9"])


def test_linear_probe_is_the_convolution_of_the_upsampled_concatenated_hidden_states(tmp_path):
    torch.manual_seed(0)
    probe = SwinLinearProbe(in_channels=1, out_channels=3, **TINY_ENCODER)
    torch.save(SwinEncoder(**TINY_ENCODER).state_dict(), tmp_path / "encoder.pt")
    report = load_pretrained(probe, tmp_path / "encoder.pt")
    assert report.encoder_fraction == 1.0 and all(k.startswith("heads.") for k in report.missing)
    assert {n for n, p in probe.named_parameters() if p.requires_grad} == {
        f"heads.{i}.{w}" for i in range(5) for w in ("weight", "bias")
    }
    x = torch.rand(2, 1, 32, 32, 32)
    with torch.no_grad():
        hidden = probe.swinViT(x, probe.normalize)
        stacked = torch.cat(
            [torch.nn.functional.interpolate(h, size=(32, 32, 32), mode="trilinear") for h in hidden], 1
        )
        weight = torch.cat([head.weight for head in probe.heads], 1)
        bias = sum(head.bias for head in probe.heads)
        expected = torch.nn.functional.conv3d(stacked, weight, bias)
        assert torch.allclose(probe(x), expected, atol=1e-5)


# ---------------------------------------------------------------- the runner


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> Path:
    """The synthetic classification demo set with 3 patients per class (18 volumes, 6 per fold)."""
    return Path(demo_covid.demo_covid_dir(tmp_path_factory.mktemp("covid_demo"), patients_per_class=3))


def write_protocol(folder: Path, demo: Path, probes: list[str], **settings) -> Path:
    """``folder/protocol.json`` for the classification bundle on ``demo``, with a random tiny encoder as ``voco``."""
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    encoder = folder / "encoder.pt"
    torch.save(SwinEncoder(**TINY_ENCODER).state_dict(), encoder)
    protocol = {
        "bundle": "voco_covid_cls",
        "configs": ["train.json", "cpu_demo.json"],
        "overrides": {"num_workers": 0, "batch_size": 1},
        "dataset_dir": str(demo),
        "fold": 0,
        "inits": {"voco": str(encoder), "scratch": None},
        "probes": probes,
        "budgets": [1, 2],
        "budget_unit": "patients_per_class",
        "split_seeds": [0, 1],
        "train_seeds": [0],
        **settings,
    }
    path = folder / "protocol.json"
    path.write_text(json.dumps(protocol))
    return path


def result_files(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(out.glob("runs/**/result.json"))}


@pytest.mark.slow  # about a minute on a shared 2-core VM: 18 volumes through two encoders, 16 probe fits
def test_feature_probes_run_resume_and_redo_an_unfinished_run(tmp_path, small_demo, monkeypatch):
    monkeypatch.chdir(REPO)
    protocol = write_protocol(tmp_path, small_demo, ["knn", "linear"])
    out = tmp_path / "out"
    results = label_efficiency.run_protocol(protocol, out)
    finished = result_files(out)
    # inits x probes x (budget 1: 2 split seeds; budget 2, the whole pool of 2 patients per class: one run)
    assert len(finished) == 2 * 2 * (2 + 1)
    rows = list(csv.DictReader(open(results)))
    run_level = [r for r in rows if r["case"] == "all"]
    assert {r["metric"] for r in run_level} == {"accuracy", "balanced_accuracy"} and len(run_level) == 24
    assert sum(r["metric"] == "correct" for r in rows) == 12 * 6  # one row per test volume and run
    splits = (out / "splits.json").read_bytes()
    cache = {p: p.stat().st_mtime_ns for p in (out / "features").iterdir()}
    assert sorted(p.name for p in cache) == ["scratch_seed0.pt", "voco.pt"]
    # what a killed run leaves: a folder without result.json
    killed = next(p for p in finished if p.parts[-5] == "voco")
    killed.unlink()
    (killed.parent / "partial.tmp").write_text("half-written")
    label_efficiency.run_protocol(protocol, out)
    again = result_files(out)
    assert {p: t for p, t in again.items() if p != killed} == {p: t for p, t in finished.items() if p != killed}
    assert killed in again and not (killed.parent / "partial.tmp").exists()
    assert (out / "splits.json").read_bytes() == splits
    assert {p: p.stat().st_mtime_ns for p in (out / "features").iterdir()} == cache
    result = json.loads(killed.read_text())
    assert result["version"] == label_efficiency.voco_components.__version__ and len(result["init"]["sha256"]) == 64
    # the same protocol elsewhere gives byte-identical splits; a changed one is refused in this folder
    label_efficiency.write_splits(tmp_path / "other", label_efficiency.make_splits(*_splits_inputs(protocol, out)))
    assert (tmp_path / "other" / "splits.json").read_bytes() == splits
    changed = write_protocol(tmp_path / "changed", small_demo, ["knn"], split_seeds=[5])
    with pytest.raises(ValueError, match="holds other splits"):
        label_efficiency.run_protocol(changed, out)


def _splits_inputs(protocol: Path, out: Path):
    p = label_efficiency.load_protocol(protocol)
    _, datalist = label_efficiency.resolve_dataset(p, out)
    return (p, *label_efficiency.pool_and_test(p, datalist))


def test_protocol_errors_name_the_file(tmp_path, small_demo):
    good = json.loads(write_protocol(tmp_path, small_demo, ["knn"]).read_text())
    cases = [
        ({"inits": {"voco": None}}, "scratch"),
        ({"probes": ["svm"]}, "probes"),
        ({"budget_unit": "volumes"}, "budget_unit"),
        ({"budgets": [2, 1]}, "increasing"),
        ({"probes": ["frozen"]}, "steps"),
        ({"colour": 1}, "unknown keys"),
    ]
    for change, message in cases:
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(ValueError, match=message) as error:
            label_efficiency.load_protocol(path)
        assert str(path) in str(error.value)


@pytest.mark.slow
def test_runner_killed_mid_protocol_resumes_without_redoing_finished_runs(tmp_path, small_demo):
    protocol = write_protocol(tmp_path, small_demo, ["frozen"], inits={"scratch": None}, steps={"frozen": 1})
    out = tmp_path / "out"
    command = [sys.executable, "-m", "voco_components.apps.label_efficiency", "run", "--config", str(protocol)]
    command += ["--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    runs = out / "runs" / "scratch" / "frozen"
    deadline = time.time() + 600
    while time.time() < deadline and not (len(result_files(out)) == 1 and len(list(runs.glob("*/*/train.log"))) == 2):
        time.sleep(0.2)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    finished = result_files(out)
    assert len(finished) == 1
    killed = next(p for p in runs.glob("*/*") if not (p / "result.json").exists() and (p / "train.log").exists())
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    again = result_files(out)
    assert len(again) == 3 and all(again[p] == t for p, t in finished.items())  # budget 2: the whole pool, once
    assert (killed / "result.json") in again


# ---------------------------------------------------------------- the overlays train in both bundles

SEG_TINY = {
    "class_names": ["background", "lungs", "bone", "soft tissue"],
    "roi_size": [64, 64, 64],
    "num_samples": 1,
    "sw_batch_size": 1,
    "max_epochs": 1,
    "epoch_length": 2,
    "warmup_steps": 1,
    "pretrained": None,
    "num_workers": 0,
    **TINY_ENCODER,
}
# 3 steps: the first has lr 0 (warm-up), the second moves the zero-initialised head, the third then passes
# gradients on to the encoder
CLS_TINY = {"spatial_size": [32, 32, 32], "batch_size": 1, "max_epochs": 1, "epoch_length": 3, "warmup_steps": 1}


def train_overlay(bundle: str, probe: str, root: Path, settings: dict) -> dict[str, bool]:
    """Train ``probe``'s overlay for a few steps; per tensor name, whether it changed."""
    configs = ("train.json", "cpu_demo.json", f"label_efficiency/{probe}.json")
    wf = bundle_workflow(bundle, configs, bundle_root=str(root), output_dir=str(root / "out"), **settings)
    network = wf.parser.get_parsed_content("network")
    before = {k: v.clone() for k, v in network.state_dict().items()}
    wf.run()
    wf.finalize()
    assert not (root / "out" / "checkpoints" / "checkpoint_best.pt").exists()  # no validation during training
    return {k: not torch.equal(before[k], v) for k, v in network.state_dict().items() if v.is_floating_point()}


def check_changed(changed: dict[str, bool], probe: str) -> None:
    encoder = [v for k, v in changed.items() if k.startswith("swinViT.")]
    rest = [v for k, v in changed.items() if not k.startswith("swinViT.")]
    assert any(rest)
    assert (not any(encoder)) if probe in ("linear", "frozen") else any(encoder)


@pytest.mark.slow
@pytest.mark.parametrize("probe", ["linear", "frozen", "full"])
def test_segmentation_overlays_train(probe, tmp_path):
    from test_btcv_seg_bundle import write_case

    cases = [write_case(tmp_path, f"case{i}", seed=i) for i in range(2)]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": cases[:1], "validation": cases[1:]}))
    settings = {**SEG_TINY, "dataset_dir": str(tmp_path), "datalist": str(datalist)}
    check_changed(train_overlay("voco_btcv_seg", probe, tmp_path / "bundle", settings), probe)


@pytest.mark.slow
@pytest.mark.parametrize("probe", ["linear", "frozen", "full"])
def test_classification_overlays_train(probe, tmp_path, small_demo):
    settings = {**CLS_TINY, **TINY_ENCODER, "dataset_dir": str(small_demo), "pretrained": None, "num_workers": 0}
    check_changed(train_overlay("voco_covid_cls", probe, tmp_path, settings), probe)


def test_shipped_protocols_load():
    for path in sorted(BUNDLES.glob("*/configs/label_efficiency/*protocol.json")):
        protocol = label_efficiency.load_protocol(path)
        assert protocol.inits["scratch"] is None and protocol.bundle == path.parts[-4]
