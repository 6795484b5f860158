"""bundles/voco_btcv_seg at tiny sizes: fine-tuning from a voco_pretrain export, evaluation, inference, errors."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events
from monai.bundle import ConfigWorkflow

from conftest import (
    BUNDLES,
    assert_resumes_exactly,
    bundle_workflow,
    first_in_chain,
    record_losses,
    run_bundle_cli,
    write_ct,
)
from voco_components.apps.demo import DEMO_DIR, DEMO_ORGANS_DATALIST
from voco_components.handlers.dice_table import DiceTableWriter
from voco_components.metrics.dice import PerClassDice
from voco_components.utils import VolumeError

BUNDLE = BUNDLES / "voco_btcv_seg"
CONFIGS = BUNDLE / "configs"
CLASSES = ["background", "lungs", "bone", "soft tissue"]
TINY = {
    "class_names": CLASSES,
    "feature_size": 12,
    "window_size": 4,
    "roi_size": [64, 64, 64],  # SwinUNETR's deepest instance norm needs a 2³ map when training
    "num_samples": 1,
    "sw_batch_size": 2,
    "num_workers": 0,
    "max_epochs": 2,
    "val_interval": 1,
    "checkpoint_interval": 1,
    "warmup_steps": 1,
    "pretrained": None,
}


def write_case(folder: Path, name: str, seed: int, shape=(64, 64, 20), affine: np.ndarray | None = None) -> dict:
    """A synthetic CT (see ``write_ct``) and its label map by HU: 1 lungs, 2 bone, 3 other soft tissue."""
    image = write_ct(folder / f"{name}_image.nii.gz", shape=shape, seed=seed)
    ct = nib.load(str(image))
    hu = np.asarray(ct.dataobj, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[hu > -300] = 3
    labels[(hu < -500) & (hu > -900)] = 1
    labels[hu > 400] = 2
    affine = ct.affine if affine is None else affine
    nib.save(nib.Nifti1Image(np.asarray(ct.dataobj), affine), str(image))
    label = folder / f"{name}_label.nii.gz"
    nib.save(nib.Nifti1Image(labels, affine), str(label))
    return {"image": image.name, "label": label.name}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    """Two training and one validation synthetic cases with a decathlon-style datalist."""
    folder = tmp_path_factory.mktemp("seg_data")
    datalist = {
        "training": [write_case(folder, "case0", 0), write_case(folder, "case1", 1)],
        "validation": [write_case(folder, "case2", 2)],
        "testing": [write_case(folder, "case2", 2)["image"]],
    }
    (folder / "datalist.json").write_text(json.dumps(datalist))
    return folder


def workflow(root: Path, data: Path, configs=("train.json",), workflow_type="train", **overrides) -> ConfigWorkflow:
    settings = {"bundle_root": str(root), "dataset_dir": str(data), "datalist": str(data / "datalist.json")}
    return bundle_workflow("voco_btcv_seg", configs, workflow_type, **{**settings, **TINY, **overrides})


def test_bundle_files_exist():
    for name in ("LICENSE", "large_files.yml", "docs/README.md", "docs/data_license.txt", "configs/logging.conf"):
        assert (BUNDLE / name).is_file(), name
    for name in ("train", "evaluate", "inference", "multi_gpu_train", "cpu_demo", "metadata"):
        assert (CONFIGS / f"{name}.json").is_file(), name


def test_defaults_are_the_papers_btcv_setup():
    config = json.loads((CONFIGS / "train.json").read_text())
    assert config["spacing"] == [1.5, 1.5, 1.5] and config["hu_range"] == [-175, 250]
    assert config["roi_size"] == [96, 96, 96] and config["batch_size"] == 1 and config["sw_batch_size"] == 4
    assert config["learning_rate"] == 3e-4 and config["weight_decay"] == 1e-5 and config["warmup_steps"] == 100
    assert config["feature_size"] == 48 and len(config["class_names"]) == 14
    assert "img_size" not in config["network_def"]  # removed from SwinUNETR in MONAI 1.5
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert [channels[str(i)] for i in range(14)] == config["class_names"]


def test_cpu_demo_segments_btcvs_organs_on_the_embedded_organ_maps():
    """cpu_demo.json trains on the abdomen CT's organ map (12 organs) and validates on the upper-abdomen slab (8),
    both on BTCV's ids and names, with the files as shipped."""
    demo = json.loads((CONFIGS / "cpu_demo.json").read_text())
    assert "DEMO_ORGANS_DATALIST" in demo["datalist"] and "class_names" not in demo  # the 13 organs of train.json
    class_names = json.loads((CONFIGS / "train.json").read_text())["class_names"]
    datalist = json.loads(DEMO_ORGANS_DATALIST.read_text())
    assert [datalist["labels"][str(i)] for i in range(14)] == class_names
    digests = json.loads((DEMO_DIR / "sha256.json").read_text())
    for split, num_organs in (("training", 12), ("validation", 8)):
        (entry,) = datalist[split]
        for name in entry.values():
            assert hashlib.sha256((DEMO_DIR / name).read_bytes()).hexdigest() == digests[name], name
        image, labels = nib.load(str(DEMO_DIR / entry["image"])), nib.load(str(DEMO_DIR / entry["label"]))
        assert np.allclose(image.affine, labels.affine) and image.shape == labels.shape
        ids = set(np.unique(np.asarray(labels.dataobj)).tolist())
        assert ids <= set(range(14)) and len(ids - {0}) == num_organs
    assert not list(DEMO_DIR.glob("*anatomy*"))


def test_absent_organs_are_left_out_of_the_dice_not_scored_zero(tmp_path):
    """Two cases, three organs: organ 3 is in no label (but predicted in case 0), organ 2 only in case 1."""
    pred, label = torch.zeros(2, 4, 4, 4, 4), torch.zeros(2, 4, 4, 4, 4)
    label[:, 1, :2] = 1  # organ 1: rows 0-1 in both cases
    label[1, 2, 2:] = 1  # organ 2: rows 2-3 of case 1
    pred[:, 1, :1] = 1  # organ 1 predicted on row 0: Dice 2·16 / (16 + 32) = 2/3
    pred[1, 2, 3:] = 1  # organ 2 predicted on row 3 of case 1: Dice 2/3
    pred[0, 3, 3:] = 1  # organ 3, absent from every label, predicted in case 0
    label[:, 0] = 1 - label[:, 1:].sum(1)
    pred[:, 0] = 1 - pred[:, 1:].sum(1)
    metric = PerClassDice(include_background=False)
    metric(pred, label)
    values = metric.aggregate()
    assert values[:2].tolist() == pytest.approx([2 / 3, 2 / 3]) and torch.isnan(values[2])

    engine = Engine(lambda engine, batch: None)
    engine.add_event_handler(Events.COMPLETED, lambda e: e.state.metrics.update(val_dice_per_class=values))
    DiceTableWriter(tmp_path, ["a", "b", "c"]).attach(engine)
    engine.run(torch.utils.data.DataLoader([0, 1]), max_epochs=1)
    report = json.loads((tmp_path / "dice.json").read_text())
    assert report["mean_dice"] == pytest.approx(2 / 3) and report["num_classes_present"] == 2
    assert report["classes"][2] == {"class": "c", "dice": None}
    rows = list(csv.DictReader((tmp_path / "dice.csv").open()))
    assert [r["dice"] for r in rows][2:] == ["n/a", rows[-1]["dice"]] and float(rows[-1]["dice"]) == pytest.approx(
        2 / 3
    )


def test_train_and_infer_properties(tmp_path, dataset):
    assert workflow(tmp_path, dataset).check_properties() == []
    infer = workflow(tmp_path, dataset, ("inference.json",), "infer")
    assert infer.check_properties() == []


def test_epochs_drive_steps_schedule_and_stream(tmp_path, dataset):
    """An override of train#trainer#max_epochs (as MONAI Label sends) sets the schedule and the stream length."""
    wf = workflow(tmp_path, dataset, batch_size=1, **{"train#trainer#max_epochs": 3})
    parser = wf.parser
    assert parser.get_parsed_content("epoch_length") == 2  # two training volumes, batch 1
    assert parser.get_parsed_content("max_steps") == 6
    assert len(parser.get_parsed_content("train#dataset")) == 6
    assert parser.get_parsed_content("lr_scheduler").t_total == 6


def test_fine_tunes_from_a_voco_pretrain_export(tmp_path, dataset, voco_encoder):
    wf = workflow(tmp_path, dataset, pretrained=str(voco_encoder))
    _, report = wf.initialize()  # again, for the load report
    exported = torch.load(voco_encoder, weights_only=True)
    network = wf.parser.get_parsed_content("network_def")
    encoder_keys = [k for k in network.state_dict() if k.startswith("swinViT.")]
    assert report.encoder_fraction == 1.0 and set(encoder_keys) <= set(report.loaded)
    assert not report.shape_mismatched and not report.unexpected
    assert all(k.startswith(("decoder", "out.", "encoder")) for k in report.missing)
    state = network.state_dict()
    for key in report.loaded:
        assert torch.equal(state[key], exported[key]), key

    losses = record_losses(wf)
    wf.run()
    wf.finalize()
    assert len(losses) == 4 and all(np.isfinite(losses))
    model = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert set(model) == set(state)
    info = json.loads((tmp_path / "models" / "model.json").read_text())
    best = json.loads((tmp_path / "outputs" / "checkpoints" / "checkpoint_best.json").read_text())
    assert info["weights"] == "best" and info["best"] == best and info["steps"] == 4
    best_state = torch.load(tmp_path / "outputs" / "checkpoints" / "checkpoint_best.pt", weights_only=True)["network"]
    assert all(torch.equal(model[k], best_state[k]) for k in model)

    # evaluate.json: a per-class Dice table, checked against a hand-computed Dice of the evaluator's outputs
    ev = workflow(tmp_path, dataset, ("train.json", "evaluate.json"))
    evaluator = ev.parser.get_parsed_content("validate#evaluator")
    captured: list[tuple[torch.Tensor, torch.Tensor]] = []
    evaluator.add_event_handler(
        Events.ITERATION_COMPLETED,
        lambda e: captured.extend((o["pred"].bool(), o["label"].bool()) for o in e.state.output),
    )
    ev.run()
    pred, label = captured[0]
    expected = []
    for c in range(1, len(CLASSES)):
        inter, total = (pred[c] & label[c]).sum().item(), pred[c].sum().item() + label[c].sum().item()
        expected.append(2 * inter / total if label[c].any() else float("nan"))
    report_json = json.loads((tmp_path / "outputs" / "eval" / "dice.json").read_text())
    assert [r["class"] for r in report_json["classes"]] == CLASSES[1:]
    for row, value in zip(report_json["classes"], expected, strict=True):
        assert (row["dice"] is None) if np.isnan(value) else row["dice"] == pytest.approx(value, abs=1e-5)
    assert report_json["mean_dice"] == pytest.approx(np.nanmean(expected), abs=1e-5)
    rows = list(csv.DictReader((tmp_path / "outputs" / "eval" / "dice.csv").open()))
    assert [r["class"] for r in rows] == [*CLASSES[1:], "mean"]
    assert float(rows[-1]["dice"]) == pytest.approx(np.nanmean(expected), abs=1e-5)


def test_inference_writes_label_maps_on_the_input_grid(tmp_path):
    """A non-RAS, anisotropic, shifted input: the label map keeps its shape and affine."""
    data = tmp_path / "data"
    affine = np.array([[-0.8, 0, 0, 30.0], [0, -0.9, 0, -12.0], [0, 0, 2.5, 100.0], [0, 0, 0, 1]])
    case = write_case(data, "odd", seed=3, shape=(70, 60, 18), affine=affine)
    (data / "datalist.json").write_text(json.dumps({"testing": [case["image"]]}))
    network = workflow(tmp_path, data, ("inference.json",), "infer").parser.get_parsed_content("network_def")
    (tmp_path / "models").mkdir()
    torch.save(network.state_dict(), tmp_path / "models" / "model.pt")
    wf = workflow(tmp_path, data, ("inference.json",), "infer")
    wf.run()
    outputs = list((tmp_path / "outputs" / "predictions").glob("*.nii.gz"))
    assert [p.name for p in outputs] == ["odd_image_seg.nii.gz"]
    source, result = nib.load(str(data / case["image"])), nib.load(str(outputs[0]))
    assert result.shape == source.shape
    np.testing.assert_allclose(result.affine, source.affine, atol=1e-4)
    values = np.unique(np.asarray(result.dataobj))
    assert set(values.tolist()) <= set(range(len(CLASSES))) and result.get_data_dtype() == np.uint8


@pytest.mark.parametrize("form", ["folder", "glob", "testing"])
def test_inference_reads_a_folder_a_glob_or_a_testing_list_and_names_outputs_after_inputs(tmp_path, form):
    data = tmp_path / "data"
    images = [write_ct(data / "ct" / "scan_a.nii.gz", shape=(48, 48, 16), seed=1)]
    images.append(write_ct(data / "ct" / "1.3.6.99.nii", shape=(40, 48, 16), seed=2))
    (data / "datalist.json").write_text(json.dumps({"testing": [str(p.relative_to(data)) for p in images]}))
    datalist = {"folder": str(data / "ct"), "glob": str(data / "ct" / "*.nii*"), "testing": str(data / "datalist.json")}
    settings = {"datalist": datalist[form]}
    network = workflow(tmp_path, data, ("inference.json",), "infer", **settings).parser.get_parsed_content(
        "network_def"
    )
    (tmp_path / "models").mkdir()
    torch.save(network.state_dict(), tmp_path / "models" / "model.pt")
    workflow(tmp_path, data, ("inference.json",), "infer", **settings).run()
    outputs = sorted(p.name for p in (tmp_path / "outputs" / "predictions").iterdir())
    assert outputs == ["1.3.6.99_seg.nii.gz", "scan_a_seg.nii.gz"]
    for image in images:
        prediction = tmp_path / "outputs" / "predictions" / f"{image.name.split('.nii')[0]}_seg.nii.gz"
        assert nib.load(str(prediction)).shape == nib.load(str(image)).shape


def test_a_missing_label_file_is_named(tmp_path, dataset):
    broken = tmp_path / "data"
    broken.mkdir()
    datalist = json.loads((dataset / "datalist.json").read_text())
    datalist["training"][0]["label"] = str(dataset / "no_such_label.nii.gz")
    for entry in datalist["training"] + datalist["validation"]:
        entry["image"] = str(dataset / entry["image"])
        entry["label"] = str(dataset / entry["label"])
    (broken / "datalist.json").write_text(json.dumps(datalist))
    dataset_ = workflow(tmp_path, broken, max_epochs=1).parser.get_parsed_content("train#dataset")
    with pytest.raises(VolumeError, match=f"{dataset / 'no_such_label.nii.gz'}: file not found"):
        dataset_[0]


def test_a_missing_pretrained_file_says_what_to_do(tmp_path, dataset):
    with pytest.raises(RuntimeError) as info:  # the config expression wraps the loader's error
        workflow(tmp_path, dataset, pretrained=str(tmp_path / "nowhere" / "model.pt"))
    cause = info.value.__cause__
    assert isinstance(cause, FileNotFoundError)
    assert str(tmp_path / "nowhere" / "model.pt") in str(cause) and "voco_pretrain" in str(cause)


def test_a_pretrained_encoder_of_another_size_is_refused(tmp_path, dataset, voco_encoder):
    with pytest.raises(RuntimeError) as info:
        workflow(tmp_path, dataset, pretrained=str(voco_encoder), feature_size=24)
    assert isinstance(info.value.__cause__, ValueError)
    assert "below the required 90%" in str(info.value.__cause__)


# label values as each dataset stores them, for the synthetic classes 1 (lungs), 2 (bone), 3 (soft tissue)
RAW_LABELS = {
    "brats21.json": (1, 4, 2),  # necrosis, enhancing tumour, oedema
    "lits.json": (1, 2, 0),  # liver, tumour
    "mmwhs.json": (205, 850, 500),  # myocardium, pulmonary artery, left ventricle
    "spleen.json": (1, 0, 0),
}


@pytest.mark.parametrize("overlay", sorted(p.name for p in (CONFIGS / "datasets").glob("*.json")))
def test_dataset_overlays_build_and_train_one_step(tmp_path, overlay):
    """Each dataset overlay: its channels and classes reach the network, the loss and one training step."""
    config = json.loads((CONFIGS / "datasets" / overlay).read_text())
    channels = config.get("in_channels", 1)
    data = tmp_path / "data"
    entries = []
    for i in range(2):
        case = write_case(data, f"c{i}", seed=i)
        label = nib.load(str(data / case["label"]))
        classes = np.asarray(label.dataobj)
        raw = np.zeros(classes.shape, dtype=np.int16)
        for synthetic, value in enumerate(RAW_LABELS[overlay], start=1):
            raw[classes == synthetic] = value
        nib.save(nib.Nifti1Image(raw, label.affine), str(data / case["label"]))
        if channels > 1:  # an MRI-like multi-channel volume from the CT
            image = nib.load(str(data / case["image"]))
            stack = np.stack([np.asarray(image.dataobj, np.float32) + 1100 * (c + 1) for c in range(channels)], -1)
            nib.save(nib.Nifti1Image(stack, image.affine), str(data / case["image"]))
        entries.append(case)
    (data / "datalist.json").write_text(json.dumps({"training": entries, "validation": entries[:1]}))
    settings = {
        **{k: v for k, v in TINY.items() if k != "class_names"},
        "bundle_root": str(tmp_path),
        "dataset_dir": str(data),
        "datalist": str(data / "datalist.json"),
        "max_epochs": 1,
        "val_interval": 100,
        "min_foreground_size": [8, 8, 8],
    }
    wf = bundle_workflow("voco_btcv_seg", ["train.json", f"datasets/{overlay}"], **settings)
    assert wf.check_properties() == []
    network = wf.parser.get_parsed_content("network_def")
    assert network.swinViT.patch_embed.proj.in_channels == channels
    assert network.out.conv.conv.out_channels == wf.parser.get_parsed_content("num_classes")
    assert wf.parser.get_parsed_content("num_classes") == len(config["class_names"])
    losses = record_losses(wf)
    wf.run()
    assert len(losses) == 2 and all(np.isfinite(losses))
    batch = wf.parser.get_parsed_content("train#dataset")[0][0]
    labels = batch["label"]
    if config.get("dice_include_background"):  # BraTS: one binary channel per region, nested TC <= WT
        assert labels.shape[0] == len(config["class_names"]) and bool((labels[0] <= labels[1]).all())
    else:
        assert set(torch.unique(labels).int().tolist()) <= set(range(len(config["class_names"])))


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path, dataset):
    """SIGKILL after step 5 (last checkpoint at step 4), then resume: steps 5 and 6 repeat the uninterrupted run."""
    settings = {
        **TINY,
        "dataset_dir": str(dataset),
        "datalist": str(dataset / "datalist.json"),
        "max_epochs": 3,
        "checkpoint_interval": 2,
    }
    assert_resumes_exactly(tmp_path, "voco_btcv_seg", settings, kill_at=5, checkpoint_at=4)


@pytest.mark.slow
def test_max_steps_3_alone_trains_3_steps_saves_and_resumes_exactly(tmp_path, dataset):
    """Two training volumes (2 steps an epoch) and --max_steps 3 with a validation interval (30, the CPU demo's)
    longer than the run: the short last epoch is validated, the best model exported, and the run resumes
    exactly from step 2."""
    settings = {k: v for k, v in TINY.items() if k not in ("max_epochs", "val_interval", "checkpoint_interval")}
    settings = {
        **settings,
        "dataset_dir": str(dataset),
        "datalist": str(dataset / "datalist.json"),
        "max_steps": 3,
        "checkpoint_interval": 2,
    }
    assert_resumes_exactly(tmp_path, "voco_btcv_seg", settings, 3, 2, ("train.json", "cpu_demo.json"))
    state = torch.load(tmp_path / "full" / "outputs" / "checkpoints" / "checkpoint_3.pt", weights_only=True)
    assert state["lr_scheduler"]["last_epoch"] == 3 and state["lr_scheduler"]["_last_lr"] == [0.0]
    info = json.loads((tmp_path / "full" / "models" / "model.json").read_text())
    assert info["steps"] == 3 and info["weights"] == "best" and info["best"]["epoch"] == 2


@pytest.mark.slow
def test_multi_gpu_config_trains_and_validates_one_volume_on_two_processes(tmp_path, dataset):
    """multi_gpu_train.json under torchrun with 2 CPU processes (gloo) and a single validation volume: both ranks
    step, every rank validates the whole set, and the Dice of the DDP validation equals a single-process
    evaluation of the exported (best) weights."""
    overrides = {
        **TINY,
        "max_epochs": 1,
        "bundle_root": str(tmp_path),
        "dataset_dir": str(dataset),
        "datalist": str(dataset / "datalist.json"),
    }
    result = run_bundle_cli("voco_btcv_seg", ["train.json", "multi_gpu_train.json"], overrides, processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    info = json.loads((tmp_path / "models" / "model.json").read_text())
    assert info["steps"] == 1 and info["weights"] == "best"  # 2 training volumes over 2 ranks
    ddp_dice = info["best"]["score"]
    single = workflow(tmp_path, dataset, ("train.json", "evaluate.json"))
    single.run()
    evaluator = single.parser.get_parsed_content("validate#evaluator")
    assert evaluator.state.iteration == 1
    assert ddp_dice == pytest.approx(evaluator.state.metrics["val_mean_dice"], abs=1e-6)


def test_same_named_inputs_in_two_folders_keep_both_label_maps(tmp_path):
    """`**` over site_a/ct.nii.gz and site_b/ct.nii.gz: each label map lands under its folder, none overwritten."""
    data = tmp_path / "data"
    shapes = {"site_a": (48, 48, 16), "site_b": (40, 44, 12)}
    for i, (site, shape) in enumerate(shapes.items()):
        write_ct(data / site / "ct.nii.gz", shape=shape, seed=i)
    settings = {"datalist": str(data / "**" / "ct.nii.gz")}
    network = workflow(tmp_path, data, ("inference.json",), "infer", **settings).parser.get_parsed_content(
        "network_def"
    )
    (tmp_path / "models").mkdir()
    torch.save(network.state_dict(), tmp_path / "models" / "model.pt")
    workflow(tmp_path, data, ("inference.json",), "infer", **settings).run()
    predictions = tmp_path / "outputs" / "predictions"
    written = sorted(str(p.relative_to(predictions)) for p in predictions.rglob("*.nii.gz"))
    assert written == ["site_a/ct_seg.nii.gz", "site_b/ct_seg.nii.gz"]
    for site, shape in shapes.items():
        assert nib.load(str(predictions / site / "ct_seg.nii.gz")).shape == shape


def test_inputs_whose_outputs_would_clash_are_refused_before_the_first_step(tmp_path):
    data = tmp_path / "data"
    write_ct(data / "ct.nii.gz", shape=(48, 48, 16), seed=0)
    write_ct(data / "ct.nii", shape=(48, 48, 16), seed=1)
    settings = {"datalist": str(data)}
    network = workflow(tmp_path, data, ("inference.json",), "infer", **settings).parser.get_parsed_content(
        "network_def"
    )
    (tmp_path / "models").mkdir()
    torch.save(network.state_dict(), tmp_path / "models" / "model.pt")
    with pytest.raises(Exception) as error:
        workflow(tmp_path, data, ("inference.json",), "infer", **settings).run()
    message = str(first_in_chain(error.value, ValueError))
    assert "same name" in message and str(data / "ct.nii.gz") in message and str(data / "ct.nii") in message
    assert not (tmp_path / "outputs" / "predictions").exists() or not any(
        (tmp_path / "outputs" / "predictions").iterdir()
    )
