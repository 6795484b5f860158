"""bundles/voco_covid_cls at tiny sizes: properties, pretrained loading, training, evaluation, inference, resume,
DDP, bad input, the synthetic demo set, k-fold datalists and the classification metrics."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.bundle import ConfigWorkflow

from conftest import BUNDLES, assert_resumes_exactly, bundle_workflow, first_in_chain, run_bundle_cli, write_ct
from voco_components.apps import demo_covid
from voco_components.apps.ccii import CLASS_NAMES
from voco_components.data.classification_datalist import load_classification_datalist
from voco_components.data.folds import fold_split
from voco_components.metrics.classification import confusion_matrix, one_vs_rest_auc
from voco_components.utils import VolumeError

BUNDLE = BUNDLES / "voco_covid_cls"
CONFIGS = BUNDLE / "configs"
TEST_PATIENTS_PER_CLASS = 3  # 2 scans each: 18 volumes, 3 folds of 6 (2 per class): 12 train / 6 validation
TINY = {
    "feature_size": 12,
    "window_size": 4,
    "spatial_size": [32, 32, 32],
    "batch_size": 1,
    "num_workers": 0,
    "max_epochs": 1,
    "warmup_steps": 1,
}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory) -> Path:
    """A small synthetic demo set (3 patients per class)."""
    folder = tmp_path_factory.mktemp("covid_demo")
    return Path(demo_covid.demo_covid_dir(folder, patients_per_class=TEST_PATIENTS_PER_CLASS))


def workflow(root: Path, demo: Path, configs=("train.json",), workflow_type="train", **overrides) -> ConfigWorkflow:
    """The bundle's workflow at the TINY sizes, in ``root``, on the demo set in ``demo``."""
    settings = {"bundle_root": str(root), "dataset_dir": str(demo), **TINY, **overrides}
    return bundle_workflow(BUNDLE.name, configs, workflow_type, **settings)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo_dir, voco_encoder) -> Path:
    """bundle_root of a one-epoch run (12 steps) fine-tuned from the voco_pretrain export."""
    root = tmp_path_factory.mktemp("covid_cls")
    wf = workflow(root, demo_dir, pretrained=str(voco_encoder))
    wf.run()
    wf.finalize()
    return root


# ---------------------------------------------------------------- bundle files and configs


def test_json_files_are_four_space_indented_with_key_order_kept():
    for path in sorted(CONFIGS.glob("*.json")):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4) + "\n", f"{path.name} is not 4-space formatted"


def test_bundle_files_exist():
    for name in ("LICENSE", "large_files.yml", "docs/README.md", "docs/data_license.txt", "configs/logging.conf"):
        assert (BUNDLE / name).is_file(), name
    for name in ("train", "evaluate", "inference", "multi_gpu_train", "cpu_demo", "metadata"):
        assert (CONFIGS / f"{name}.json").is_file(), name


def test_metadata_is_valid_and_describes_class_probabilities(schema_file):
    from monai.bundle import verify_metadata

    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(schema_file))
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    train = json.loads((CONFIGS / "train.json").read_text())
    assert meta["version"] in meta["changelog"]
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert image["num_channels"] == 1 and image["spatial_shape"] == train["spatial_size"]
    assert image["is_patch_data"] is False
    assert (pred["type"], pred["format"], pred["num_channels"], pred["spatial_shape"]) == (
        "probabilities",
        "classes",
        3,
        [1, 3],
    )
    assert (
        pred["channel_def"] == {"0": "NCP", "1": "CP", "2": "Normal"} == {str(i): n for i, n in enumerate(CLASS_NAMES)}
    )
    assert train["class_names"] == list(CLASS_NAMES)


def test_train_defaults_are_the_papers_fine_tuning_settings():
    """Table 9 (fine-tuning): AdamW 3e-4, weight decay 1e-5, warm-up cosine with 100 warm-up steps, batch 1;
    100 epochs for CC-CCII; 3 folds (fold 0 held out by default)."""
    config = json.loads((CONFIGS / "train.json").read_text())
    assert config["learning_rate"] == 3e-4 and config["weight_decay"] == 1e-5 and config["warmup_steps"] == 100
    assert config["batch_size"] == 1 and config["max_epochs"] == 100 and config["fold"] == 0
    assert config["optimizer"]["_target_"] == "torch.optim.AdamW"
    assert config["lr_scheduler"]["_target_"] == "monai.optimizers.WarmupCosineSchedule"
    assert config["spatial_size"] == [96, 96, 96] and config["feature_size"] == 48
    assert config["pretrained"] == "$@bundle_root + '/../voco_pretrain/models/model.pt'"


def test_train_and_infer_properties(tmp_path, demo_dir):
    assert workflow(tmp_path, demo_dir, pretrained="null").check_properties() == []
    assert workflow(tmp_path, demo_dir, ("inference.json",), "infer").check_properties() == []


def test_epoch_length_schedule_and_stream_follow_an_overridden_max_epochs(tmp_path, demo_dir):
    """MONAI Label overrides train#trainer#max_epochs; the schedule and the sample stream follow it."""
    wf = workflow(tmp_path, demo_dir, pretrained="null", batch_size=4, **{"train#trainer#max_epochs": 5})
    train_data = wf.parser.get_parsed_content("train#dataset#data")
    assert len(train_data) == 12  # two of the three folds
    assert wf.parser.get_parsed_content("epoch_length") == 3  # ceil(12 / 4)
    assert wf.parser.get_parsed_content("lr_scheduler").t_total == 5 * 3
    assert len(wf.parser.get_parsed_content("train#dataset")) == 5 * 3 * 4


# ---------------------------------------------------------------- pretrained weights


def test_pretrained_encoder_loads_with_the_exported_values(tmp_path, demo_dir, voco_encoder, capsys):
    wf = workflow(tmp_path, demo_dir, pretrained=str(voco_encoder))
    exported = torch.load(voco_encoder, weights_only=True)
    state = wf.parser.get_parsed_content("network").state_dict()
    encoder = [k for k in state if k.startswith("swinViT.")]
    assert encoder and set(encoder) == set(exported)
    for key in encoder:
        assert torch.equal(state[key].cpu(), exported[key]), key
    assert {k for k in state if k not in exported} == {"head.weight", "head.bias"}
    report = capsys.readouterr().out  # the bundle's logging.conf sends records to stdout
    assert f"model.pt: loaded {len(exported)} tensors (100.0% of the encoder)" in report
    assert "missing 2, unexpected 0, shape-mismatched 0" in report  # the missing two: the new head


def test_missing_default_pretrained_says_to_run_voco_pretrain_or_pass_null(tmp_path, demo_dir):
    with pytest.raises(RuntimeError) as info:
        workflow(tmp_path / "bundle", demo_dir)  # default: <bundle_root>/../voco_pretrain/models/model.pt
    message = str(first_in_chain(info.value, FileNotFoundError))
    assert str(tmp_path / "bundle" / ".." / "voco_pretrain" / "models" / "model.pt") in message
    assert "voco_pretrain" in message and "--pretrained null" in message


def test_a_checkpoint_of_another_size_is_refused(tmp_path, demo_dir, voco_encoder):
    with pytest.raises(RuntimeError) as info:
        workflow(tmp_path, demo_dir, pretrained=str(voco_encoder), feature_size=24)
    assert "does not fit this network" in str(first_in_chain(info.value, ValueError))


# ---------------------------------------------------------------- training, evaluation, inference


def test_training_from_the_pretrained_encoder_exports_the_classifier(trained, voco_encoder):
    exported = torch.load(voco_encoder, weights_only=True)
    model = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert set(model) == set(exported) | {"head.weight", "head.bias"} and model["head.weight"].shape == (3, 16 * 12)
    assert any(not torch.equal(model[k], v) for k, v in exported.items())  # fine-tuning moved the encoder
    info = json.loads((trained / "models" / "model.json").read_text())
    assert info["steps"] == 12 and info["pretrained"] == str(voco_encoder) and info["class_names"] == list(CLASS_NAMES)
    ckpts = trained / "outputs" / "checkpoints"
    assert (ckpts / "checkpoint_12.pt").is_file() and (ckpts / "checkpoint_best.pt").is_file()
    assert not list(ckpts.glob(".*tmp"))


def _pairwise_auc(scores: list[float], positive: list[bool]) -> float:
    """AUC as the fraction of (positive, negative) pairs ranked right, ties counting one half."""
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def test_evaluation_writes_accuracy_auc_and_confusion_matrix(trained, demo_dir):
    wf = workflow(trained, demo_dir, ("train.json", "evaluate.json"))
    wf.run()
    evaluator_metrics = wf.parser.get_parsed_content("validate#evaluator").state.metrics
    eval_dir = trained / "outputs" / "eval"
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    volumes = json.loads((eval_dir / "predictions.json").read_text())["volumes"]

    _, held_out = fold_split(demo_dir / "datalist.json", 0)
    assert [v["image"] for v in volumes] == [str(demo_dir / e["image"]) for e in held_out]
    assert [v["label"] for v in volumes] == [CLASS_NAMES[e["label"]] for e in held_out]
    probabilities = [[v["probabilities"][n] for n in CLASS_NAMES] for v in volumes]
    labels = [CLASS_NAMES.index(v["label"]) for v in volumes]
    predicted = [max(range(3), key=lambda c, p=p: p[c]) for p in probabilities]
    matrix = [
        [sum(1 for t, q in zip(labels, predicted, strict=True) if (t, q) == (i, j)) for j in range(3)] for i in range(3)
    ]
    accuracy = sum(t == q for t, q in zip(labels, predicted, strict=True)) / len(labels)

    assert metrics["num_volumes"] == len(held_out) == 6
    assert metrics["confusion_matrix"] == matrix
    assert metrics["accuracy"] == pytest.approx(accuracy) == pytest.approx(evaluator_metrics["val_accuracy"])
    aucs = [_pairwise_auc([p[c] for p in probabilities], [t == c for t in labels]) for c in range(3)]
    assert [row["auc"] for row in metrics["classes"]] == pytest.approx(aucs)
    assert metrics["mean_auc"] == pytest.approx(sum(aucs) / 3) == pytest.approx(evaluator_metrics["val_auc"])
    assert metrics["extra"]["checkpoint"] == str(trained / "models" / "model.pt")
    with open(eval_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["class"] for r in rows] == [*CLASS_NAMES, "mean"]
    assert [float(r["auc"]) for r in rows[:3]] == pytest.approx(aucs)


def test_inference_writes_probabilities_that_sum_to_one(trained, demo_dir):
    workflow(trained, demo_dir, ("inference.json",), "infer").run()
    out = trained / "outputs" / "inference"
    record = json.loads((out / "probabilities.json").read_text())
    with open(out / "probabilities.csv") as handle:
        rows = list(csv.DictReader(handle))
    _, held_out = fold_split(demo_dir / "datalist.json", 0)
    assert record["class_names"] == list(CLASS_NAMES)
    assert (
        [v["image"] for v in record["volumes"]]
        == [r["image"] for r in rows]
        == [str(demo_dir / e["image"]) for e in held_out]
    )
    for volume, row in zip(record["volumes"], rows, strict=True):
        probabilities = [volume["probabilities"][n] for n in CLASS_NAMES]
        assert [float(row[f"prob_{n}"]) for n in CLASS_NAMES] == probabilities
        assert sum(probabilities) == pytest.approx(1.0, abs=1e-6) and min(probabilities) >= 0
        assert volume["prediction"] == row["prediction"] == CLASS_NAMES[int(np.argmax(probabilities))]


@pytest.mark.parametrize("form", ["folder", "glob", "testing"])
def test_inference_reads_a_folder_a_glob_or_a_testing_list(tmp_path, form):
    """Volumes without labels: each row of the probabilities is named by its input file."""
    data = tmp_path / "data"
    images = [
        write_ct(data / "ct" / name, shape=(48, 48, 16), seed=i) for i, name in enumerate(["p2.nii.gz", "p1.nii"])
    ]
    datalist = {
        "folder": str(data / "ct"),
        "glob": str(data / "ct" / "p*"),
        "testing": str(data / "datalist.json"),
    }[form]
    (data / "datalist.json").write_text(json.dumps({"testing": [{"image": f"ct/{p.name}"} for p in images]}))
    settings = {"dataset_dir": str(data), "datalist": datalist}
    if form == "testing":
        settings["datalist_key"] = "testing"
    network = workflow(tmp_path, data, ("inference.json",), "infer", **settings).parser.get_parsed_content("network")
    (tmp_path / "models").mkdir()
    torch.save(network.state_dict(), tmp_path / "models" / "model.pt")
    workflow(tmp_path, data, ("inference.json",), "infer", **settings).run()
    record = json.loads((tmp_path / "outputs" / "inference" / "probabilities.json").read_text())
    expected = [str(p) for p in images] if form == "testing" else [str(images[1]), str(images[0])]  # sorted
    assert [v["image"] for v in record["volumes"]] == expected
    for volume in record["volumes"]:
        assert sum(volume["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)


def test_a_testing_list_needs_no_fold_and_no_labels(tmp_path):
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"fold0": [{"image": "a.nii.gz", "label": 0}], "testing": ["t.nii.gz"]}))
    assert load_classification_datalist(datalist, "/data", "testing", fold=0, require_labels=False) == [
        {"image": "/data/t.nii.gz"}
    ]
    with pytest.raises(ValueError, match="t.nii.gz has no 'label'"):
        load_classification_datalist(datalist, "/data", "testing", fold=0)


# ---------------------------------------------------------------- exact resume, multi-GPU, CLI


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path, demo_dir, voco_encoder):
    """One epoch of 12 steps, dropout on, checkpoints every 4 steps; SIGKILL after step 9, resume at step 8."""
    settings = {
        **TINY,
        "dataset_dir": str(demo_dir),
        "pretrained": str(voco_encoder),
        "checkpoint_interval": 4,
        "dropout": 0.5,
    }
    assert_resumes_exactly(tmp_path, BUNDLE.name, settings, kill_at=9, checkpoint_at=8)


@pytest.mark.slow
def test_max_steps_3_alone_trains_3_steps_saves_and_resumes_exactly(tmp_path, demo_dir):
    """The CPU demo overlay (validation every 5 epochs) with --max_steps 3 of a 12-step epoch: the run stops
    at step 3, validates, exports the best model, and a run killed after step 3 resumes exactly from step 2."""
    settings = {**TINY, "dataset_dir": str(demo_dir), "pretrained": "null", "max_steps": 3, "checkpoint_interval": 2}
    settings.pop("max_epochs")
    assert_resumes_exactly(tmp_path, BUNDLE.name, settings, 3, 2, ("train.json", "cpu_demo.json"))
    state = torch.load(tmp_path / "full" / "outputs" / "checkpoints" / "checkpoint_3.pt", weights_only=True)
    assert state["trainer"]["epoch_length"] == 12 and state["lr_scheduler"]["last_epoch"] == 3
    assert state["lr_scheduler"]["_last_lr"] == [0.0]
    info = json.loads((tmp_path / "full" / "models" / "model.json").read_text())
    assert info["steps"] == 3 and info["weights"] == "best" and info["best"]["epoch"] == 1


@pytest.mark.slow
def test_multi_gpu_config_runs_ddp_on_cpu_with_two_processes(tmp_path, demo_dir, voco_encoder):
    overrides = {**TINY, "bundle_root": str(tmp_path), "dataset_dir": str(demo_dir), "pretrained": str(voco_encoder)}
    result = run_bundle_cli(BUNDLE.name, ["train.json", "multi_gpu_train.json"], overrides, processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(not k.startswith("module.") for k in state) and "head.weight" in state
    checkpoint = torch.load(tmp_path / "outputs" / "checkpoints" / "checkpoint_6.pt", weights_only=True)
    assert checkpoint["trainer"]["iteration"] == 6  # 12 volumes, 2 ranks of batch 1: 6 steps per epoch


@pytest.mark.slow
def test_ddp_validation_of_one_volume_on_two_processes_equals_one_process(tmp_path, demo_dir):
    """One validation volume, two ranks: every rank validates it, and the DDP accuracy (all-reduced) is the
    accuracy of a single-process evaluation of the exported weights."""
    train, val = fold_split(demo_dir / "datalist.json", 0)
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": train[:2], "validation": val[:1]}))
    overrides = {**TINY, "bundle_root": str(tmp_path), "dataset_dir": str(demo_dir), "pretrained": "null"}
    overrides |= {"datalist": str(datalist), "fold": "null"}
    result = run_bundle_cli(BUNDLE.name, ["train.json", "multi_gpu_train.json"], overrides, processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((tmp_path / "models" / "model.json").read_text())
    assert info["steps"] == 1 and info["weights"] == "best"
    single = workflow(tmp_path, demo_dir, ("train.json", "evaluate.json"), **overrides)
    single.run()
    report = json.loads((tmp_path / "outputs" / "eval" / "metrics.json").read_text())
    assert report["num_volumes"] == 1
    assert info["best"]["score"] == report["accuracy"]


@pytest.mark.slow
def test_cli_training_id_from_scratch_with_pretrained_null(tmp_path, demo_dir):
    overrides = {**TINY, "bundle_root": str(tmp_path), "dataset_dir": str(demo_dir), "pretrained": "null"}
    result = run_bundle_cli(BUNDLE.name, ["train.json"], overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pretrained is null: training from scratch" in result.stdout
    assert json.loads((tmp_path / "models" / "model.json").read_text())["pretrained"] is None


# ---------------------------------------------------------------- bad input


def _single_volume_datalist(tmp: Path, image: str, label=0) -> Path:
    datalist = tmp / "datalist.json"
    entry = {"image": image, "label": label}
    datalist.write_text(json.dumps({"training": [entry], "validation": [entry]}))
    return datalist


@pytest.mark.parametrize("case", ["missing", "truncated"])
def test_bad_volume_is_reported_by_name(tmp_path, demo_dir, case):
    good = write_ct(tmp_path / "good.nii.gz")
    path = tmp_path / f"{case}.nii.gz"
    if case == "truncated":
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    datalist = _single_volume_datalist(tmp_path, path.name)
    wf = workflow(tmp_path, demo_dir, pretrained="null", fold=None, datalist=str(datalist), dataset_dir=str(tmp_path))
    with pytest.raises(VolumeError, match="file not found" if case == "missing" else "cannot be read") as info:
        wf.parser.get_parsed_content("train#dataset")[0]
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    ("label", "message"), [("1", "integer class indices"), (3, "outside 0..2"), (None, "no 'label'")]
)
def test_bad_labels_are_reported_with_the_datalist(tmp_path, label, message):
    write_ct(tmp_path / "ct.nii.gz")
    datalist = _single_volume_datalist(tmp_path, "ct.nii.gz", label)
    if label is None:
        datalist.write_text(json.dumps({"training": [{"image": "ct.nii.gz"}]}))
    with pytest.raises(ValueError, match=message) as info:
        load_classification_datalist(datalist, tmp_path, "training", num_classes=3)
    assert str(datalist) in str(info.value) and "ct.nii.gz" in str(info.value)


# ---------------------------------------------------------------- k-fold datalists


def test_fold_selection_holds_out_one_fold(demo_dir):
    datalist = demo_dir / "datalist.json"
    folds = [json.loads(datalist.read_text())[f"fold{k}"] for k in range(3)]
    everything = sorted(e["image"] for fold in folds for e in fold)
    for k in range(3):
        train = load_classification_datalist(datalist, demo_dir, "training", fold=k, num_classes=3)
        val = load_classification_datalist(datalist, demo_dir, "validation", fold=k, num_classes=3)
        assert [e["image"] for e in val] == [str(demo_dir / e["image"]) for e in folds[k]]
        assert sorted(str(Path(e["image"]).relative_to(demo_dir)) for e in train + val) == everything
        assert not {e["patient"] for e in train} & {e["patient"] for e in val}
        assert sorted(e["label"] for e in val) == [0, 0, 1, 1, 2, 2]  # stratified: one patient per class


def test_the_fold_override_reaches_the_bundle(tmp_path, demo_dir):
    wf = workflow(tmp_path, demo_dir, pretrained="null", fold=2)
    val = wf.parser.get_parsed_content("validate#dataset#data")
    expected = json.loads((demo_dir / "datalist.json").read_text())["fold2"]
    assert [e["image"] for e in val] == [str(demo_dir / e["image"]) for e in expected]


def test_fold_null_reads_training_and_validation_lists(tmp_path):
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": "a.nii.gz", "label": 2}], "validation": ["b.nii.gz"]}))
    assert load_classification_datalist(datalist, "/data", "training") == [{"image": "/data/a.nii.gz", "label": 2}]
    assert load_classification_datalist(datalist, "/data", "training", fold=None) == [
        {"image": "/data/a.nii.gz", "label": 2}
    ]
    assert load_classification_datalist(datalist, "/data", "validation", require_labels=False) == [
        {"image": "/data/b.nii.gz"}
    ]
    with pytest.raises(ValueError, match="expected lists fold0"):
        load_classification_datalist(datalist, "/data", "training", fold=0)


# ---------------------------------------------------------------- the synthetic demo set


def test_demo_set_is_deterministic_and_reused(tmp_path, demo_dir):
    again = Path(demo_covid.demo_covid_dir(tmp_path / "again", patients_per_class=TEST_PATIENTS_PER_CLASS))
    for name in ("datalist.json", "demo_covid.json"):
        assert (again / name).read_text() == (demo_dir / name).read_text()
    images = sorted(p.name for p in (demo_dir / "images").iterdir())
    assert len(images) == 3 * TEST_PATIENTS_PER_CLASS * len(demo_covid.SOURCES)
    for name in images:
        assert (again / "images" / name).read_bytes() == (demo_dir / "images" / name).read_bytes()
    stamp = (again / "images" / images[0]).stat().st_mtime_ns
    demo_covid.demo_covid_dir(again, patients_per_class=TEST_PATIENTS_PER_CLASS)  # same settings: reused
    assert (again / "images" / images[0]).stat().st_mtime_ns == stamp
    demo_covid.demo_covid_dir(again, patients_per_class=1)  # other settings: written again
    assert len(json.loads((again / "demo_covid.json").read_text())["cases"]) == 3 * len(demo_covid.SOURCES)


def _uint8(hu: float) -> int:
    low, high = demo_covid.DEMO_WINDOW_HU
    return int(np.clip(np.round((hu - low) / (high - low) * 255), 0, 255))


def test_demo_classes_differ_as_designed(demo_dir):
    """Each volume is its source crop through the lung window, except inside its lesions: none (Normal),
    one consolidation on one side (CP), 12-20 ground-glass opacities on both sides (NCP). Every patient has
    one scan of each source CT."""
    record = json.loads((demo_dir / "demo_covid.json").read_text())
    datalist = json.loads((demo_dir / "datalist.json").read_text())["training"]
    scans = len(demo_covid.SOURCES)
    assert sorted(e["label"] for e in datalist) == sorted([0, 1, 2] * TEST_PATIENTS_PER_CLASS * scans)
    patients = {(c["patient"], c["class_name"]) for c in record["cases"]}
    assert len(patients) == 3 * TEST_PATIENTS_PER_CLASS
    for patient in patients:
        assert sorted(c["source"] for c in record["cases"] if (c["patient"], c["class_name"]) == patient) == sorted(
            demo_covid.SOURCES
        )
    sources = {}
    for case in record["cases"]:
        name = case["source"]
        if name not in sources:
            sources[name] = np.asarray(nib.load(demo_covid.DEMO_DIR / f"{name}_image.nii.gz").dataobj, np.float32)
        image = nib.load(demo_dir / "images" / f"{case['class_name']}_{case['patient']}_{name}.nii.gz")
        volume = np.asarray(image.dataobj)
        assert volume.dtype == np.uint8 and volume.shape == (demo_covid.CROP_SIZE,) * 2 + (demo_covid.SLAB_SLICES,)
        np.testing.assert_allclose(image.header.get_zooms(), demo_covid.SPACING)
        (x, y, z), size, slices = case["origin"], demo_covid.CROP_SIZE, demo_covid.SLAB_SLICES
        crop = sources[name][x : x + size, y : y + size, z : z + slices]
        low, high = demo_covid.DEMO_WINDOW_HU
        base = np.clip(np.round((crop - low) / (high - low) * 255), 0, 255).astype(np.uint8)
        base = base[::-1] if case["flip"] else base
        changed = volume != base
        lesions = [demo_covid.Lesion(**{k: tuple(v) for k, v in lesion.items()}) for lesion in case["lesions"]]
        inside = np.zeros(volume.shape, bool)
        for lesion in lesions:
            inside |= demo_covid.lesion_mask(lesion, volume.shape)
        assert not (changed & ~inside).any()  # nothing changes outside the lesions
        values = volume[changed]
        midline_sides = {lesion.x_range for lesion in lesions}
        if case["class_name"] == "Normal":
            assert not lesions and not changed.any()
        elif case["class_name"] == "CP":
            assert len(lesions) == 1 and changed.sum() > 500
            assert values.min() >= _uint8(demo_covid.CONSOLIDATION_HU[0])
            assert values.max() <= _uint8(demo_covid.CONSOLIDATION_HU[1])
            low_x, high_x = lesions[0].x_range
            assert np.all((np.argwhere(changed)[:, 0] >= low_x) & (np.argwhere(changed)[:, 0] < high_x))
        else:
            assert 12 <= len(lesions) <= 20 and changed.sum() > 500 and len(midline_sides) == 2  # both lungs
            assert values.min() >= _uint8(demo_covid.GGO_HU[0]) and values.max() <= _uint8(demo_covid.GGO_HU[1])
            for side in midline_sides:
                low_x, high_x = side
                assert changed[low_x:high_x].any()


# ---------------------------------------------------------------- metrics


def test_one_vs_rest_auc_matches_pairwise_counting_with_ties():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=40)
    probabilities = np.round(rng.dirichlet(np.ones(3), size=40), 1)  # rounded: many ties
    expected = [_pairwise_auc(probabilities[:, c].tolist(), (labels == c).tolist()) for c in range(3)]
    np.testing.assert_allclose(one_vs_rest_auc(probabilities, labels), expected)
    assert np.isnan(one_vs_rest_auc(probabilities[labels != 1], labels[labels != 1])[1])  # no positives


def test_confusion_matrix_counts_true_rows_and_predicted_columns():
    labels, predictions = np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 0, 2, 2])
    expected = np.zeros((3, 3), int)
    for t, p in zip(labels, predictions, strict=True):
        expected[t, p] += 1
    np.testing.assert_array_equal(confusion_matrix(labels, predictions, 3), expected)
    assert confusion_matrix(labels, predictions, 3)[2].tolist() == [1, 0, 2]
