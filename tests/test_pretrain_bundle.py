"""bundles/voco_pretrain end to end at tiny sizes: training, export, evaluation, inference, errors.

The Model Zoo checks that every bundle must pass (files, metadata, JSON format, properties) are in test_zoo_checks.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.networks.nets import SwinUNETR

from conftest import (
    BUNDLES,
    PRETRAIN_TINY,
    assert_resumes_exactly,
    bundle_workflow,
    exception_chain,
    record_losses,
    run_bundle_cli,
    write_ct,
)
from voco_components.apps.demo import DEMO_DATALIST, DEMO_DIR
from voco_components.utils import VolumeError

BUNDLE = BUNDLES / "voco_pretrain"
CONFIGS = BUNDLE / "configs"
TINY = PRETRAIN_TINY


def workflow(tmp: Path, configs=("train.json",), workflow_type="train", **overrides) -> ConfigWorkflow:
    return bundle_workflow("voco_pretrain", configs, workflow_type, **{"bundle_root": str(tmp), **TINY, **overrides})


def test_metadata_declares_the_pooled_embedding():
    meta = json.loads((CONFIGS / "metadata.json").read_text())
    fmt = meta["network_data_format"]
    assert fmt["inputs"]["image"]["num_channels"] == 1
    assert fmt["outputs"]["pred"]["num_channels"] == 16 * 48  # pooled SwinViT embedding at feature_size 48


def test_bundle_files_exist():
    assert (CONFIGS / "logging.conf").is_file()
    for name in ("train", "evaluate", "multi_gpu_train", "cpu_demo"):
        assert (CONFIGS / f"{name}.json").is_file(), name


def test_train_defaults_are_the_papers_table_9():
    config = json.loads((CONFIGS / "train.json").read_text())
    assert config["spacing"] == [1.5, 1.5, 1.5]
    assert config["hu_range"] == [-175, 250]
    assert config["region_size"] == [384, 384, 64] and config["grid"] == [4, 4, 1]
    assert config["roi_size"] == [64, 64, 64] and config["num_crops"] == 4 and config["batch_size"] == 4
    assert config["learning_rate"] == 1e-3 and config["weight_decay"] == 1e-2
    assert config["warmup_steps"] == 100 and config["max_steps"] == 100000
    assert config["variant"] == "paper" and config["lambda_reg"] == 1.0


# the official variant pools SwinUNETR's encoder10 output, whose instance norm needs a 2³ map: 64³ crops
VARIANT_SIZES = {
    "paper": {},
    "official": {"region_size": [128, 128, 64], "roi_size": [64, 64, 64], "min_foreground_size": [16, 16, 16]},
}


@pytest.mark.parametrize("variant", ["paper", "official"])
def test_training_exports_a_swinunetr_encoder(tmp_path, variant):
    wf = workflow(tmp_path, variant=variant, **VARIANT_SIZES[variant])
    losses = record_losses(wf)
    wf.run()
    wf.finalize()
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert state and all(k.startswith(("swinViT.", "encoder")) for k in state)
    target = SwinUNETR(in_channels=1, out_channels=14, feature_size=12, window_size=4)
    result = target.load_state_dict(state, strict=False)
    assert not result.unexpected_keys
    for key, value in state.items():
        assert torch.equal(target.state_dict()[key], value)
    trained = wf.parser.get_parsed_content("network_def").state_dict()
    assert all(torch.equal(trained[k].cpu(), v) for k, v in state.items())
    info = json.loads((tmp_path / "models" / "model.json").read_text())
    assert info["variant"] == variant and info["steps"] == 4
    assert {"val_position_top1", "val_position_mae"} <= set(info["metrics"])
    ckpts = tmp_path / "outputs" / "checkpoints"
    assert (ckpts / "checkpoint_init.pt").is_file() and (ckpts / "checkpoint_best.pt").is_file()
    assert sorted(p.name for p in ckpts.glob("checkpoint_[0-9]*.pt")) == ["checkpoint_2.pt", "checkpoint_4.pt"]


@pytest.mark.slow
def test_killed_run_resumes_exactly(tmp_path):
    """SIGKILL after step 5 (last checkpoint at step 4), resume: steps 5 and 6 repeat the uninterrupted losses."""
    assert_resumes_exactly(tmp_path, "voco_pretrain", {**TINY, "max_steps": 6}, kill_at=5, checkpoint_at=4)


@pytest.mark.slow
def test_max_steps_3_alone_trains_3_steps_saves_and_resumes_exactly(tmp_path):
    """The CPU demo (20 steps per validation epoch) with --max_steps 3: one short epoch, validated, checkpointed
    at step 3, and a run killed after step 3 resumes from step 2; the schedule ends at step 3 (cosine to 0)."""
    settings = {k: v for k, v in TINY.items() if k not in ("max_steps", "val_every_steps", "checkpoint_interval")}
    settings = {**settings, "max_steps": 3, "checkpoint_interval": 2}
    assert_resumes_exactly(tmp_path, "voco_pretrain", settings, 3, 2, ("train.json", "cpu_demo.json"))
    state = torch.load(tmp_path / "full" / "outputs" / "checkpoints" / "checkpoint_3.pt", weights_only=True)
    assert state["trainer"]["epoch_length"] == 20 and state["lr_scheduler"]["last_epoch"] == 3
    assert state["lr_scheduler"]["_last_lr"] == [0.0]  # warm-up 1 step, then cosine over steps 1..3
    info = json.loads((tmp_path / "full" / "models" / "model.json").read_text())
    assert info["steps"] == 3 and info["max_steps"] == 3 and "val_position_top1" in info["metrics"]


@pytest.mark.slow
def test_cli_training_id_and_evaluate_and_inference(tmp_path):
    """The `training` id through the CLI, then evaluate.json and inference.json on its outputs."""
    overrides = [f"--{k} {json.dumps(v).replace(' ', '')}" for k, v in TINY.items()]
    base = f"{sys.executable} -m monai.bundle run"
    train = f"{base} training --config_file {CONFIGS / 'train.json'} --bundle_root {tmp_path} " + " ".join(overrides)
    result = subprocess.run(train, shell=True, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()

    wf = workflow(tmp_path, ("train.json", "evaluate.json"), val_num_crops=16, val_repeats=13)
    wf.run()
    metrics = json.loads((tmp_path / "outputs" / "eval" / "metrics.json").read_text())
    for key in (
        "position_top1",
        "position_mae",
        "position_auc",
        "chance_top1",
        "init_position_top1",
        "init_position_mae",
        "init_position_auc",
    ):
        assert key in metrics
    assert metrics["num_random_crops"] == 16 * 13 >= 200
    assert 0 <= metrics["position_top1"] <= 1 and 0 <= metrics["init_position_mae"] <= 2
    assert metrics["chance_top1"] == pytest.approx(1 / 4, abs=0.2)  # 2x2x1 grid

    infer = workflow(
        tmp_path,
        ("inference.json",),
        "infer",
        feature_size=12,
        window_size=4,
        region_size=[64, 64, 32],
        grid=[2, 2, 1],
        roi_size=[32, 32, 32],
        num_crops=3,
    )
    infer.run()
    record = torch.load(tmp_path / "outputs" / "features" / "lung2_image_voco.pt", weights_only=True)
    assert record["features"].shape == (4 + 3, 16 * 12)
    assert record["boxes"].shape == (7, 3, 2) and record["labels"].shape == (3, 4)
    torch.testing.assert_close(record["labels"].sum(-1), torch.ones(3))


@pytest.mark.slow
def test_multi_gpu_config_runs_ddp_on_cpu_with_two_processes(tmp_path):
    overrides = {**TINY, "bundle_root": str(tmp_path), "max_steps": 2, "val_every_steps": 2}
    result = run_bundle_cli("voco_pretrain", ["train.json", "multi_gpu_train.json"], overrides, processes=2)
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert all(not k.startswith("module.") for k in state)
    checkpoint = torch.load(tmp_path / "outputs" / "checkpoints" / "checkpoint_2.pt", weights_only=True)
    assert checkpoint["trainer"]["iteration"] == 2


def bad_volume_cases(tmp: Path) -> dict[str, tuple[Path, str]]:
    import gzip

    import nibabel as nib
    import numpy as np

    good = write_ct(tmp / "good.nii.gz")
    truncated = tmp / "truncated.nii.gz"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    flat = tmp / "flat.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((40, 40), dtype=np.int16), np.eye(4)), str(flat))
    small = write_ct(tmp / "small.nii.gz", shape=(8, 8, 2))
    nan = tmp / "nan.nii.gz"
    data = np.asanyarray(nib.load(str(good)).dataobj).astype(np.float32)
    data[10, 10, 5] = np.nan
    nib.save(nib.Nifti1Image(data, nib.load(str(good)).affine), str(nan))
    assert gzip.open(good).read(4)  # the good file itself reads
    return {
        "missing": (tmp / "missing.nii.gz", "file not found"),
        "truncated": (truncated, "cannot be read"),
        "not_3d": (flat, "expected a 3D volume"),
        "too_small": (small, "smaller than the minimum"),
        "nan": (nan, "NaN or infinite"),
    }


@pytest.mark.parametrize("case", ["missing", "truncated", "not_3d", "too_small", "nan"])
def test_bad_volume_is_reported_by_name(tmp_path, case):
    path, message = bad_volume_cases(tmp_path)[case]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": path.name}], "validation": [{"image": "good.nii.gz"}]}))
    wf = workflow(tmp_path, datalist=str(datalist), dataset_dir=str(tmp_path))
    dataset = wf.parser.get_parsed_content("train#dataset")
    with pytest.raises(VolumeError, match=message) as info:
        dataset[0]
    assert str(path) in str(info.value)


def test_training_stops_on_a_bad_volume_without_partial_checkpoints(tmp_path):
    path, _ = bad_volume_cases(tmp_path)["truncated"]
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [{"image": path.name}], "validation": [{"image": "good.nii.gz"}]}))
    wf = workflow(tmp_path, datalist=str(datalist), dataset_dir=str(tmp_path))
    with pytest.raises(Exception) as info:
        wf.run()
    assert str(path) in "".join(str(e) for e in exception_chain(info.value))
    ckpts = tmp_path / "outputs" / "checkpoints"
    assert not list(ckpts.glob("checkpoint_[0-9]*.pt")) and not list(ckpts.glob(".*tmp"))


def test_skip_policy_trains_on_the_good_volumes(tmp_path, capsys):
    cases = bad_volume_cases(tmp_path)
    datalist = tmp_path / "datalist.json"
    entries = [{"image": "good.nii.gz"}, {"image": cases["truncated"][0].name}, {"image": cases["nan"][0].name}]
    datalist.write_text(json.dumps({"training": entries, "validation": [{"image": "good.nii.gz"}]}))
    wf = workflow(tmp_path, datalist=str(datalist), dataset_dir=str(tmp_path), on_bad_volume="skip", max_steps=2)
    losses = record_losses(wf)
    wf.run()
    assert len(losses) == 2
    dataset = wf.parser.get_parsed_content("train#dataset")
    assert {dataset.data[i]["image"] for i in dataset.bad_volumes} <= {str(cases["truncated"][0]), str(cases["nan"][0])}
    logged = capsys.readouterr().out  # the bundle's logging.conf sends records to stdout
    assert "skipping a bad volume" in logged and "NaN or infinite" in logged


def test_datalists_merge_and_resolve_against_dataset_dir(tmp_path):
    from voco_components.data.datalists import load_datalists

    first, second = tmp_path / "btcv.json", tmp_path / "covid.json"
    first.write_text(json.dumps({"training": [{"image": "imagesTr/a.nii.gz"}, {"image": "/abs/b.nii.gz"}]}))
    second.write_text(json.dumps({"training": ["c.nii.gz"], "validation": [{"image": "d.nii.gz"}]}))
    merged = load_datalists([first, second], "/data", "training")
    assert merged == [{"image": "/data/imagesTr/a.nii.gz"}, {"image": "/abs/b.nii.gz"}, {"image": "/data/c.nii.gz"}]
    with pytest.raises(ValueError, match="no 'validation' list"):
        load_datalists([first], "/data", "validation")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        load_datalists(tmp_path / "nope.json", "/data")


def test_folders_and_patterns_as_pretraining_and_inference_datalists(tmp_path):
    """--datalist <folder> trains on all its volumes, --val_datalist <glob> validates on what it matches, and
    inference on a folder writes one feature file per input, named after it (dots in the name kept)."""
    train = [write_ct(tmp_path / "train" / f"{name}.nii.gz", seed=i) for i, name in enumerate(["b", "a"])]
    held_out = write_ct(tmp_path / "val" / "1.3.6.1.4.mhd.nii.gz", seed=3)
    wf = workflow(tmp_path, datalist=str(tmp_path / "train"), val_datalist=str(tmp_path / "val" / "*.nii.gz"))
    assert wf.parser.get_parsed_content("train#data") == [{"image": str(p)} for p in sorted(train)]
    assert wf.parser.get_parsed_content("validate#data") == [{"image": str(held_out)}]

    tiny = {"feature_size": 12, "window_size": 4, "region_size": [64, 64, 32], "grid": [2, 2, 1]}
    tiny |= {"roi_size": [32, 32, 32], "num_crops": 3, "datalist": str(tmp_path / "val")}
    infer = workflow(tmp_path, ("inference.json",), "infer", **tiny)
    (tmp_path / "models").mkdir()
    torch.save(infer.parser.get_parsed_content("network_def").state_dict(), tmp_path / "models" / "model.pt")
    workflow(tmp_path, ("inference.json",), "infer", **tiny).run()
    written = sorted(p.name for p in (tmp_path / "outputs" / "features").iterdir())
    assert written == ["1.3.6.1.4.mhd_voco.pt"]
    record = torch.load(tmp_path / "outputs" / "features" / written[0], weights_only=True)
    assert record["source"] == str(held_out) and record["features"].shape == (4 + 3, 16 * 12)


def test_demo_data_ships_inside_the_package():
    meta = json.loads(DEMO_DATALIST.read_text())
    for entry in meta["training"] + meta["validation"]:
        assert (DEMO_DIR / entry["image"]).is_file()
    assert sum(p.stat().st_size for p in DEMO_DIR.iterdir()) < 15 * 2**20


@pytest.mark.slow
def test_tracking_mlflow_records_the_training_loss_and_held_out_metrics(tmp_path):
    """`--tracking mlflow` (MONAI's own patch of the config) logs to a SQLite store under output_dir."""
    mlflow = pytest.importorskip("mlflow")
    overrides = " ".join(f"--{k} {json.dumps(v).replace(' ', '')}" for k, v in TINY.items())
    cmd = (
        f"{sys.executable} -m monai.bundle run --config_file {CONFIGS / 'train.json'} "
        f"--bundle_root {tmp_path} --tracking mlflow {overrides}"
    )
    result = subprocess.run(cmd, shell=True, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'outputs' / 'mlruns.db'}")
    run = mlflow.search_runs(search_all_experiments=True).iloc[0]
    assert {"metrics.train_loss", "metrics.val_position_top1", "metrics.val_position_mae"} <= set(run.index)


def _random_transform(**overrides):
    """train#random_transform of train.json + cpu_demo.json with some ids overridden."""
    parser = ConfigParser()
    parser.read_config([str(CONFIGS / "train.json"), str(CONFIGS / "cpu_demo.json")])
    for key, value in overrides.items():
        parser[key] = value
    return parser.get_parsed_content("train#random_transform")


def test_region_jitter_crops_a_random_sub_region_before_the_grid():
    """region_min_scale < 1: each sample cuts its grid from a random sub-region, reproducibly from its seed."""
    volume = torch.arange(128 * 128 * 32, dtype=torch.float32).reshape(1, 128, 128, 32) / (128 * 128 * 32)
    paper = _random_transform(region_min_scale=[1.0, 1.0, 1.0])
    assert [type(t).__name__ for t in paper.transforms] == ["VoCoCropd"]
    jitter = _random_transform(region_min_scale=[0.5, 0.5, 1.0])
    assert [type(t).__name__ for t in jitter.transforms] == ["RandScaleCropd", "VoCoCropd"]
    outputs = []
    for seed in (3, 3, 4):
        jitter.set_random_state(seed=seed)
        outputs.append(jitter({"image": volume.clone()}))
    assert torch.equal(outputs[0]["image"], outputs[1]["image"])  # same seed, same crops
    assert not torch.equal(outputs[0]["image"], outputs[2]["image"])
    paper.set_random_state(seed=3)
    whole = paper({"image": volume.clone()})["image"]
    n = 16  # 4x4x1 bases come first: a sub-region's first base spans less of the volume than the whole's
    sub_span = outputs[0]["image"][:n].amax() - outputs[0]["image"][:n].amin()
    assert sub_span < whole[:n].amax() - whole[:n].amin()


def test_feature_files_of_same_named_inputs_in_two_folders_keep_their_folders(tmp_path):
    images = [write_ct(tmp_path / "data" / site / "ct.nii.gz", seed=i) for i, site in enumerate(["site_a", "site_b"])]
    tiny = {"feature_size": 12, "window_size": 4, "region_size": [64, 64, 32], "grid": [2, 2, 1]}
    tiny |= {"roi_size": [32, 32, 32], "num_crops": 3, "datalist": str(tmp_path / "data" / "**" / "*.nii.gz")}
    infer = workflow(tmp_path, ("inference.json",), "infer", **tiny)
    (tmp_path / "models").mkdir()
    torch.save(infer.parser.get_parsed_content("network_def").state_dict(), tmp_path / "models" / "model.pt")
    workflow(tmp_path, ("inference.json",), "infer", **tiny).run()
    features = tmp_path / "outputs" / "features"
    written = sorted(str(p.relative_to(features)) for p in features.rglob("*.pt"))
    assert written == ["site_a/ct_voco.pt", "site_b/ct_voco.pt"]
    for image, name in zip(images, written, strict=True):
        assert torch.load(features / name, weights_only=True)["source"] == str(image)


def test_the_cpu_demo_probe_keeps_its_organ_maps_when_dataset_dir_is_the_users(tmp_path):
    """cpu_demo.json with --dataset_dir /my/data --datalist my.json: the user's relative entries resolve in their
    folder, and the organ probe still reads the embedded organ maps beside its own datalist."""
    user = tmp_path / "my_data"
    for i, name in enumerate(["a", "b"]):
        write_ct(user / f"{name}.nii.gz", seed=i)
    (user / "my.json").write_text(json.dumps({"training": ["a.nii.gz"], "validation": ["b.nii.gz"]}))
    settings = {"dataset_dir": str(user), "datalist": str(user / "my.json"), "max_steps": 2, "val_every_steps": 2}
    wf = workflow(tmp_path / "run", ("train.json", "cpu_demo.json"), **{**settings, "probe_max_crops": 8})
    assert wf.parser.get_parsed_content("train#data") == [{"image": str(user / "a.nii.gz")}]
    wf.run()
    metrics = wf.parser.get_parsed_content("validate#evaluator").state.metrics
    assert 0.0 <= metrics["val_probe_knn_accuracy"] <= 1.0 and metrics["val_probe_num_fit_crops"] > 0
