"""VoCo in 2D through the bundles, at tiny sizes on the ChestX-ray14-style demo set: voco_pretrain with its cxr14
overlay (export, strict load into SwinUNETR(spatial_dims=2), resume, DDP, evaluation) and bundles/voco_cxr14_cls
(pretrained loading, training, evaluation on the official test list with per-finding AUCs, inference, resume)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import verify_metadata
from monai.networks.nets import SwinUNETR

from conftest import BUNDLES, assert_resumes_exactly, bundle_workflow, first_in_chain, run_bundle_cli
from voco_components.apps import demo_cxr
from voco_components.apps.cxr14 import FINDINGS
from voco_components.networks import ResNet18Encoder, UNetEncoder

CLS = BUNDLES / "voco_cxr14_cls"
PRETRAIN_2D = ("train.json", "cxr14.json")
DEMO_PATIENTS = 40
TINY_PRETRAIN = {
    "feature_size": 12,
    "window_size": 4,
    "projector_dim": 64,
    "region_size": [64, 64],
    "grid": [2, 2],
    "roi_size": [32, 32],
    "num_crops": 2,
    "val_num_crops": 4,
    "val_repeats": 1,
    "batch_size": 2,
    "num_workers": 0,
    "max_steps": 2,
    "val_every_steps": 2,
    "checkpoint_interval": 2,
    "warmup_steps": 1,
}
TINY_CLS = {
    "feature_size": 12,
    "window_size": 4,
    "spatial_size": [64, 64],
    "batch_size": 4,
    "val_batch_size": 8,
    "num_workers": 0,
    "max_epochs": 1,
    "warmup_steps": 1,
}


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return Path(demo_cxr.demo_cxr_dir(tmp_path_factory.mktemp("demo_cxr"), patients=DEMO_PATIENTS))


def pretrain(root: Path, demo: Path, configs=PRETRAIN_2D, **overrides):
    settings = {"bundle_root": str(root), "dataset_dir": str(demo), **TINY_PRETRAIN, **overrides}
    return bundle_workflow("voco_pretrain", configs, **settings)


def classifier(root: Path, demo: Path, configs=("train.json",), workflow_type="train", **overrides):
    settings = {"bundle_root": str(root), "dataset_dir": str(demo), **TINY_CLS, **overrides}
    return bundle_workflow(CLS.name, configs, workflow_type, **settings)


@pytest.fixture(scope="module")
def encoder_2d(tmp_path_factory, demo) -> Path:
    """``models/model_cxr14.pt`` of a 2-step 2D pretraining on the demo set."""
    root = tmp_path_factory.mktemp("pretrain_2d")
    wf = pretrain(root, demo)
    wf.run()
    wf.finalize()
    return root / "models" / "model_cxr14.pt"


@pytest.fixture(scope="module")
def trained(tmp_path_factory, demo, encoder_2d) -> Path:
    root = tmp_path_factory.mktemp("cxr14_cls")
    wf = classifier(root, demo, pretrained=str(encoder_2d))
    wf.run()
    wf.finalize()
    return root


# ---------------------------------------------------------------- voco_pretrain in 2D


def test_2d_export_loads_strictly_into_swinunetr_2d(encoder_2d):
    state = torch.load(encoder_2d, weights_only=True)
    assert state and all(k.startswith("swinViT.") for k in state)
    net = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, window_size=4, spatial_dims=2)
    net.swinViT.load_state_dict({k.removeprefix("swinViT."): v for k, v in state.items()}, strict=True)
    info = json.loads(encoder_2d.with_suffix(".json").read_text())
    assert info["spatial_dims"] == 2 and info["steps"] == 2 and info["roi_size"] == [32, 32]
    assert {"val_position_top1", "val_position_auc"} <= set(info["metrics"])
    assert info["datalist"].endswith("pretraining.json")


def test_2d_pretraining_reads_the_pretraining_part_and_holds_out_fine_tuning_validation(tmp_path, demo, capsys):
    wf = pretrain(tmp_path, demo)
    train = wf.parser.get_parsed_content("train#data")
    held_out = wf.parser.get_parsed_content("validate#data")
    parts = json.loads((demo / "pretraining.json").read_text())
    assert [e["image"] for e in train] == [str(demo / e["image"]) for e in parts["training"]]
    assert {e["image"] for e in held_out} <= {
        str(demo / e["image"]) for e in json.loads((demo / "datalist.json").read_text())["validation"]
    }
    batch = next(iter(wf.parser.get_parsed_content("train#dataloader")))
    assert batch["image"].shape == (2, 4 + 2, 1, 32, 32) and batch["label"].shape == (2, 2, 4)
    wf.parser.get_parsed_content("validate#evaluator")
    assert "organ probe off" in capsys.readouterr().out


@pytest.mark.slow
def test_2d_pretraining_resumes_exactly_after_a_kill(tmp_path, demo):
    settings = {**TINY_PRETRAIN, "dataset_dir": str(demo), "max_steps": 4, "val_every_steps": 4}
    # where the shared resume check looks for the checkpoints and the export
    settings.update(output_dir="$@bundle_root + '/outputs'", export_path="$@bundle_root + '/models/model.pt'")
    assert_resumes_exactly(tmp_path, "voco_pretrain", settings, kill_at=3, checkpoint_at=2, configs=PRETRAIN_2D)


@pytest.mark.slow
def test_2d_pretraining_evaluates_against_its_initialisation(tmp_path, demo):
    wf = pretrain(tmp_path, demo)
    wf.run()
    evaluate = pretrain(tmp_path, demo, configs=(*PRETRAIN_2D, "evaluate.json"))
    evaluate.run()
    metrics = json.loads((tmp_path / "outputs" / "cxr14" / "eval" / "metrics.json").read_text())
    assert {"position_top1", "init_position_top1", "position_auc", "init_position_auc"} <= set(metrics)
    assert metrics["chance_top1"] < metrics["init_position_top1"] <= 1.0


@pytest.mark.slow
def test_2d_pretraining_runs_ddp_on_two_processes(tmp_path, demo):
    overrides = {**TINY_PRETRAIN, "bundle_root": str(tmp_path), "dataset_dir": str(demo)}
    result = run_bundle_cli("voco_pretrain", [*PRETRAIN_2D, "multi_gpu_train.json"], overrides, processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "models" / "model_cxr14.pt").is_file()


# ---------------------------------------------------------------- voco_cxr14_cls: files and defaults


def test_metadata_is_valid_and_names_the_14_findings(schema_file):
    verify_metadata(meta_file=str(CLS / "configs" / "metadata.json"), filepath=str(schema_file))
    meta = json.loads((CLS / "configs" / "metadata.json").read_text())
    train = json.loads((CLS / "configs" / "train.json").read_text())
    image, pred = meta["network_data_format"]["inputs"]["image"], meta["network_data_format"]["outputs"]["pred"]
    assert image["spatial_shape"] == train["spatial_size"] == [224, 224] and image["num_channels"] == 1
    assert (pred["type"], pred["num_channels"], pred["spatial_shape"]) == ("probabilities", 14, [1, 14])
    assert pred["channel_def"] == {str(i): name for i, name in enumerate(FINDINGS)}
    assert train["class_names"] == list(FINDINGS) and train["network_def"]["spatial_dims"] == 2
    for name in ("train", "evaluate", "inference", "multi_gpu_train", "cpu_demo"):
        assert (CLS / "configs" / f"{name}.json").is_file()


def test_defaults_are_the_papers_setting():
    """BCE on 14 sigmoid outputs, a Swin-B-size SwinViT at 224x224, AdamW 3e-4 with a warm-up cosine schedule, the
    2D pretraining's export as the encoder, the official test list for the evaluation."""
    train = json.loads((CLS / "configs" / "train.json").read_text())
    assert train["loss"]["_target_"] == "torch.nn.BCEWithLogitsLoss"
    assert train["feature_size"] == 48 and train["window_size"] == 7
    assert train["learning_rate"] == 3e-4 and train["optimizer"]["_target_"] == "torch.optim.AdamW"
    assert train["pretrained"].endswith("/../voco_pretrain/models/model_cxr14.pt'")
    assert json.loads((CLS / "configs" / "evaluate.json").read_text())["validate#split"] == "testing"
    pretrain_2d = json.loads((BUNDLES / "voco_pretrain" / "configs" / "cxr14.json").read_text())
    assert pretrain_2d["export_path"].endswith("/models/model_cxr14.pt'")
    assert (pretrain_2d["region_size"], pretrain_2d["grid"], pretrain_2d["roi_size"]) == ([256, 256], [4, 4], [64, 64])


def test_train_and_infer_properties(tmp_path, demo):
    assert classifier(tmp_path, demo, pretrained="null").check_properties() == []
    assert classifier(tmp_path, demo, ("inference.json",), "infer").check_properties() == []


# ---------------------------------------------------------------- pretrained weights


def test_the_2d_export_loads_into_the_classifier(tmp_path, demo, encoder_2d, capsys):
    wf = classifier(tmp_path, demo, pretrained=str(encoder_2d))
    exported = torch.load(encoder_2d, weights_only=True)
    state = wf.parser.get_parsed_content("network").state_dict()
    assert {k for k in state if k not in exported} == {"head.weight", "head.bias"}
    for key, value in exported.items():
        assert torch.equal(state[key].cpu(), value), key
    assert f"model_cxr14.pt: loaded {len(exported)} tensors (100.0% of the encoder)" in capsys.readouterr().out


def test_missing_default_pretrained_says_to_run_voco_pretrain_or_pass_null(tmp_path, demo):
    with pytest.raises(RuntimeError) as info:
        classifier(tmp_path / "bundle", demo)
    message = str(first_in_chain(info.value, FileNotFoundError))
    assert "model_cxr14.pt" in message and "--pretrained null" in message


def test_a_3d_encoder_is_refused(tmp_path, demo, voco_encoder):
    with pytest.raises(RuntimeError) as info:
        classifier(tmp_path, demo, pretrained=str(voco_encoder))
    assert "does not fit this network" in str(first_in_chain(info.value, ValueError))


# ---------------------------------------------------------------- the 2D CNN options

TINY_CNN = {"cnn_features": [8, 8, 16, 32, 64, 8]}
CNN_OPTIONS = {  # overlays of voco_pretrain and voco_cxr14_cls, export, settings, the encoder built by hand
    "unet": ("cxr14_cnn.json", "cnn.json", "model_cxr14_cnn.pt", TINY_CNN,
             lambda: UNetEncoder(spatial_dims=2, features=TINY_CNN["cnn_features"])),
    "resnet18": ("cxr14_resnet18.json", "resnet18.json", "model_cxr14_resnet18.pt", {},
                 lambda: ResNet18Encoder(spatial_dims=2)),
}  # fmt: skip


@pytest.mark.slow  # a 2-step 2D CNN pretraining, then one classifier epoch from its export
@pytest.mark.parametrize("option", CNN_OPTIONS)
def test_the_cnn_options_pretrain_export_and_fine_tune(tmp_path, demo, capsys, option):
    """``cxr14_cnn.json``: VoCo on BasicUNet's 2D contracting path, ``cnn.json`` the classifier on it;
    ``cxr14_resnet18.json``: VoCo on ResNet-18 (PCRLv2's CNN), ``resnet18.json`` the classifier on it."""
    pretrain_overlay, classifier_overlay, export_name, settings, reference_encoder = CNN_OPTIONS[option]
    pretrained = pretrain(tmp_path / "pretrain", demo, configs=(*PRETRAIN_2D, pretrain_overlay), **settings)
    pretrained.run()
    pretrained.finalize()
    export = tmp_path / "pretrain" / "models" / export_name
    exported = torch.load(export, weights_only=True)
    reference = reference_encoder()
    assert {k: v.shape for k, v in exported.items()} == {k: v.shape for k, v in reference.state_dict().items()}
    reference.load_state_dict(exported)  # strict
    info = json.loads(export.with_suffix(".json").read_text())
    assert info["encoder"] == type(pretrained.parser.get_parsed_content("network_def")).__name__
    assert all(info[k] == v for k, v in settings.items())
    capsys.readouterr()
    configs = ("train.json", classifier_overlay)
    wf = classifier(tmp_path / "cls", demo, configs=configs, pretrained=str(export), **settings)
    state = wf.parser.get_parsed_content("network").state_dict()
    assert {k for k in state if k not in exported} == {"head.weight", "head.bias"}
    assert all(torch.equal(state[k].cpu(), v) for k, v in exported.items())
    assert f"loaded {len(exported)} tensors (100.0% of the encoder)" in capsys.readouterr().out
    wf.run()
    wf.finalize()
    model = torch.load(tmp_path / "cls" / "models" / "model.pt", weights_only=True)
    assert model["head.weight"].shape == (14, wf.parser.get_parsed_content("network_def").out_channels)


@pytest.mark.parametrize("option", CNN_OPTIONS)
def test_a_swin_encoder_is_refused_by_the_cnn_classifiers(tmp_path, demo, encoder_2d, option):
    _, classifier_overlay, _, settings, _ = CNN_OPTIONS[option]
    with pytest.raises(RuntimeError) as info:
        classifier(tmp_path, demo, configs=("train.json", classifier_overlay), pretrained=str(encoder_2d), **settings)
    assert "does not fit this network" in str(first_in_chain(info.value, ValueError))


# ---------------------------------------------------------------- training, evaluation, inference


def pairwise_auc(scores, positive) -> float:
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def test_training_exports_the_classifier(trained, encoder_2d):
    model = torch.load(trained / "models" / "model.pt", weights_only=True)
    assert model["head.weight"].shape == (14, 16 * 12)
    info = json.loads((trained / "models" / "model.json").read_text())
    assert info["pretrained"] == str(encoder_2d) and info["class_names"] == list(FINDINGS)


def test_evaluation_on_the_test_list_reports_every_finding(trained, demo):
    wf = classifier(trained, demo, ("train.json", "evaluate.json"))
    wf.run()
    metrics = json.loads((trained / "outputs" / "eval" / "metrics.json").read_text())
    images = json.loads((trained / "outputs" / "eval" / "predictions.json").read_text())["images"]
    testing = json.loads((demo / "datalist.json").read_text())["testing"]
    assert [i["image"] for i in images] == [str(demo / e["image"]) for e in testing]
    assert metrics["num_images"] == len(testing)
    expected, absent = {}, {}
    for c, name in enumerate(FINDINGS):
        scores = [i["probabilities"][name] for i in images]
        positive = [e["label"][c] == 1 for e in testing]
        if all(positive) or not any(positive):
            absent[name] = "no positive case" if not any(positive) else "no negative case"
        else:
            expected[name] = pairwise_auc(scores, positive)
    rows = {row["class"]: row for row in metrics["classes"]}
    for name, value in expected.items():
        assert rows[name]["auc"] == pytest.approx(value)
    for name in absent:
        assert rows[name]["auc"] is None
    assert metrics["absent"] == absent and metrics["num_classes_scored"] == len(expected)
    assert metrics["mean_auc"] == pytest.approx(np.mean(list(expected.values())))
    with open(trained / "outputs" / "eval" / "metrics.csv") as handle:
        table = {row["class"]: row for row in csv.DictReader(handle)}
    assert all(table[name]["auc"] == "absent" for name in absent)


@pytest.mark.parametrize("form", ["testing", "folder", "glob"])
def test_inference_writes_probabilities_per_image(trained, demo, form):
    folder = demo / "images_001" / "images"
    source = {"testing": {}, "folder": {"datalist": str(folder)}, "glob": {"datalist": str(folder / "0000000*.png")}}
    out = trained / "outputs" / f"inference_{form}"
    wf = classifier(trained, demo, ("inference.json",), "infer", inference_dir=str(out), **source[form])
    wf.run()
    rows = json.loads((out / "probabilities.json").read_text())["images"]
    if form == "testing":
        wanted = [str(demo / e["image"]) for e in json.loads((demo / "datalist.json").read_text())["testing"]]
    else:
        wanted = sorted(str(p) for p in folder.glob("*.png" if form == "folder" else "0000000*.png"))
    assert [r["image"] for r in rows] == wanted
    assert all(0.0 <= p <= 1.0 for r in rows for p in r["probabilities"].values())
    with open(out / "probabilities.csv") as handle:
        header = next(csv.reader(handle))
    assert header == ["image", *(f"prob_{n}" for n in FINDINGS)]


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path, demo):
    settings = {**TINY_CLS, "dataset_dir": str(demo), "pretrained": "null", "max_epochs": 2, "checkpoint_interval": 2}
    assert_resumes_exactly(tmp_path, CLS.name, settings, kill_at=3, checkpoint_at=2)


@pytest.mark.slow
def test_scratch_baseline_from_the_command_line(tmp_path, demo):
    overrides = {**TINY_CLS, "bundle_root": str(tmp_path), "dataset_dir": str(demo), "pretrained": "null"}
    result = run_bundle_cli(CLS.name, ["train.json"], overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "pretrained is null: training from scratch" in result.stdout + result.stderr
    assert json.loads((tmp_path / "models" / "model.json").read_text())["pretrained"] is None


@pytest.mark.slow
def test_multi_gpu_config_runs_ddp_on_cpu_with_two_processes(tmp_path, demo):
    overrides = {**TINY_CLS, "bundle_root": str(tmp_path), "dataset_dir": str(demo), "pretrained": "null"}
    result = run_bundle_cli(CLS.name, ["train.json", "multi_gpu_train.json"], overrides, processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()
