"""The online organ probe: crops and their labels, frozen features, scores of informative and constant features,
its place among the evaluator's handlers, best-checkpoint selection, and the probe metrics in metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from ignite.engine import Engine
from torch import nn

from conftest import PRETRAIN_TINY, bundle_workflow
from voco_components.evaluation.organ_probe import PROBE_COUNTS, PROBE_SCORES, label_crops, organ_crops
from voco_components.handlers.online_probe import OnlineProbeHandler
from voco_components.transforms.pipelines import ct_preprocessing

BLOCK = 16  # organ blocks of the synthetic volumes, in voxels at 1.5 mm
ORGAN_HU = {0: -50.0, 1: 0.0, 2: 100.0, 3: 200.0}  # the organ decides the intensity; 0 = no organ
FIT_BLOCKS = [[1, 1, 1], [1, 2, 2], [3, 3, 0]]  # organ of each 16³ block, (x, y); one block along z
SCORE_BLOCKS = [[1, 2, 2], [3, 3, 3], [0, 0, 1]]


def write_organ_case(folder: Path, name: str, blocks: list[list[int]], seed: int, depth: int = BLOCK) -> dict:
    """A CT at 1.5 mm whose (x, y) blocks of 16 voxels hold one organ id each, with HU set by the organ."""
    organs = np.kron(np.asarray(blocks, dtype=np.uint8), np.ones((BLOCK, BLOCK), dtype=np.uint8))
    organs = np.repeat(organs[:, :, None], depth, axis=2)
    hu = np.vectorize(ORGAN_HU.get)(organs) + np.random.default_rng(seed).normal(0, 5, organs.shape)
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    folder.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(hu.astype(np.int16), affine), str(folder / f"{name}_image.nii.gz"))
    nib.save(nib.Nifti1Image(organs, affine), str(folder / f"{name}_organs.nii.gz"))
    return {"image": f"{name}_image.nii.gz", "label": f"{name}_organs.nii.gz"}


@pytest.fixture(scope="module")
def probe_data(tmp_path_factory) -> Path:
    """A probe datalist: one fit volume (8 organ blocks) and one score volume (7 organ blocks)."""
    folder = tmp_path_factory.mktemp("probe_data")
    datalist = {
        "training": [write_organ_case(folder, "fit", FIT_BLOCKS, seed=0)],
        "validation": [write_organ_case(folder, "score", SCORE_BLOCKS, seed=1)],
    }
    (folder / "probe.json").write_text(json.dumps(datalist))
    return folder / "probe.json"


class MeanIntensityEncoder(nn.Module):
    """A stub encoder whose one probe feature map is its batch-normalised input: pooled, the crop's mean."""

    def __init__(self) -> None:
        super().__init__()
        self.norm = nn.BatchNorm3d(1)  # running stats move if the probe ran it in training mode
        self.scale = nn.Parameter(torch.ones(1))

    def probe_feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        y = self.norm(x) * self.scale
        return [y, 1.0 - y]  # two directions, so that the cosine of the pooled (m, 1 - m) separates means


class ConstantEncoder(nn.Module):
    """A stub encoder with the same features for every crop."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight.expand(x.shape[0], 3)


def handler(encoder: nn.Module, datalist: Path, **kwargs) -> OnlineProbeHandler:
    settings = {"roi_size": [BLOCK] * 3, "min_organ_fraction": 0.05, "k": 1, **kwargs}
    preprocessing = ct_preprocessing(label_keys=["label"])
    return OnlineProbeHandler(encoder, str(datalist), str(datalist.parent), preprocessing, **settings)


def run_probe(probe: OnlineProbeHandler) -> dict:
    engine = Engine(lambda engine, batch: None)
    probe.attach(engine)
    engine.run([0], max_epochs=1)
    return engine.state.metrics


def test_crop_labels_are_the_majority_organ_by_hand():
    labels = torch.zeros(4, 2, 2, 5, dtype=torch.long)  # 4 crops of 20 voxels
    labels[0].view(-1)[:7] = 3  # 7 × organ 3, 2 × organ 1: organ 3
    labels[0].view(-1)[7:9] = 1
    labels[1].view(-1)[:2] = 2  # 2 × 2, 2 × 5: a tie goes to the lower id; 4/20 organ voxels
    labels[1].view(-1)[2:4] = 5
    labels[2].view(-1)[0] = 4  # 1/20 = 5 % organ: dropped at 10 %
    majority, keep = label_crops(labels, min_organ_fraction=0.1)  # crop 3 has no organ
    assert majority.tolist() == [3, 2, 4, 0] and keep.tolist() == [True, True, False, False]
    assert label_crops(labels, min_organ_fraction=0.05)[1].tolist() == [True, True, True, False]


def test_crops_lie_on_a_regular_grid_and_thin_axes_are_padded():
    image = torch.arange(6 * 4 * 3, dtype=torch.float32).reshape(1, 6, 4, 3)
    label = torch.zeros(1, 6, 4, 3, dtype=torch.long)
    label[0, 4:, 2:] = 7  # only the crop starting at (4, 2) holds organ voxels
    label[0, :2, :2] = 2
    crops = organ_crops(image, label, roi_size=[2, 2, 4], stride=[2, 2, 2], min_organ_fraction=0.5)
    # grid starts x 0, 2, 4; y 0, 2; z 0 (3 slices padded to 4): crops (0, 0) and (4, 2) are organ
    assert crops.labels.tolist() == [2, 7] and crops.images.shape == (2, 1, 2, 2, 4)
    torch.testing.assert_close(crops.images[1, :, :, :, :3], image[:, 4:6, 2:4, :])
    torch.testing.assert_close(crops.images[1, :, :, :, 3], image[:, 4:6, 2:4, 2])  # replicated last slice


def test_probing_leaves_the_encoder_and_its_modes_unchanged(probe_data):
    encoder = MeanIntensityEncoder().train()
    before = {k: v.clone() for k, v in encoder.state_dict().items()}
    run_probe(handler(encoder, probe_data))
    after = encoder.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and BatchNorm running stats
    assert encoder.training and encoder.norm.training
    encoder.norm.eval()  # a mixed train/eval state comes back as it was
    run_probe(handler(encoder, probe_data))
    assert encoder.training and not encoder.norm.training


def test_features_that_carry_the_organ_score_one(probe_data):
    metrics = run_probe(handler(MeanIntensityEncoder(), probe_data))
    assert metrics["val_probe_num_fit_crops"] == 8 and metrics["val_probe_num_score_crops"] == 7
    for name in PROBE_SCORES:
        assert metrics[f"val_{name}"] == pytest.approx(1.0), name


def test_constant_features_score_the_majority_rate(probe_data):
    """Every fit crop votes (k = 8) and the logistic regression sees no signal: both predict the fit majority,
    organ 1 (4 of 8 fit blocks), which is 2 of the 7 score blocks, one of their 3 organs."""
    metrics = run_probe(handler(ConstantEncoder(), probe_data, k=8))
    for probe in ("knn", "linear"):
        assert metrics[f"val_probe_{probe}_accuracy"] == pytest.approx(2 / 7)
        assert metrics[f"val_probe_{probe}_balanced_accuracy"] == pytest.approx(1 / 3)


def test_max_crops_takes_an_even_subset(probe_data):
    metrics = run_probe(handler(MeanIntensityEncoder(), probe_data, max_crops=3))
    assert metrics["val_probe_num_fit_crops"] == 3 and metrics["val_probe_num_score_crops"] == 3


def test_a_disabled_probe_attaches_nothing():
    engine = Engine(lambda engine, batch: None)
    OnlineProbeHandler(ConstantEncoder(), None, ".", ct_preprocessing(), roi_size=[BLOCK] * 3).attach(engine)
    engine.run([0], max_epochs=1)
    assert not any(k.startswith("val_probe") for k in engine.state.metrics)


def test_a_probe_datalist_without_labels_is_named(tmp_path):
    case = write_organ_case(tmp_path, "fit", FIT_BLOCKS, seed=0)
    (tmp_path / "probe.json").write_text(json.dumps({"training": [{"image": case["image"]}], "validation": [case]}))
    probe = handler(ConstantEncoder(), tmp_path / "probe.json")
    with pytest.raises(ValueError, match="probe.json: the probe entry .*fit_image.nii.gz has no 'label'"):
        probe.compute()


@pytest.mark.slow
def test_pretraining_with_the_probe_logs_selects_and_evaluates_it(tmp_path, probe_data):
    """The bundle with the probe on: the metrics reach the StatsHandler, select the best checkpoint, go to
    models/model.json, and evaluate.json writes them with their init_ twins to metrics.json."""
    settings = {
        **PRETRAIN_TINY,
        "bundle_root": str(tmp_path),
        "probe_datalist": str(probe_data),
        "probe_dataset_dir": str(probe_data.parent),
        "probe_stride": [BLOCK] * 3,  # 32³ crops (the tiny roi_size) every 16 voxels: 2 × 2 per volume
        "best_metric": "val_probe_linear_accuracy",
    }
    wf = bundle_workflow("voco_pretrain", **settings)
    stats = next(h for h in wf.parser.get_parsed_content("validate#handlers") if type(h).__name__ == "StatsHandler")
    logged: list[dict] = []
    stats.epoch_print_logger = lambda engine: logged.append(dict(engine.state.metrics))
    wf.run()
    wf.finalize()
    assert len(logged) == 2  # validations after steps 2 and 4
    for metrics in logged:
        assert {f"val_{n}" for n in PROBE_SCORES + PROBE_COUNTS} <= set(metrics)
        assert metrics["val_probe_num_fit_crops"] == 4 and metrics["val_probe_num_score_crops"] == 4  # all hold organs
    best = json.loads((tmp_path / "outputs" / "checkpoints" / "checkpoint_best.json").read_text())
    scores = [m["val_probe_linear_accuracy"] for m in logged]
    assert best["metric"] == "val_probe_linear_accuracy" and best["score"] == pytest.approx(max(scores))
    info = json.loads((tmp_path / "models" / "model.json").read_text())
    assert info["metrics"]["val_probe_knn_accuracy"] == pytest.approx(logged[-1]["val_probe_knn_accuracy"])

    evaluation = bundle_workflow("voco_pretrain", ("train.json", "evaluate.json"), **settings)
    evaluation.run()
    written = json.loads((tmp_path / "outputs" / "eval" / "metrics.json").read_text())
    for name in PROBE_SCORES:
        assert 0.0 <= written[name] <= 1.0 and 0.0 <= written[f"init_{name}"] <= 1.0
    assert written["probe_linear_accuracy"] == pytest.approx(logged[-1]["val_probe_linear_accuracy"])
    assert written["probe_num_fit_crops"] == 4 and written["probe_num_score_crops"] == 4
