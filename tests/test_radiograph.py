"""Reading radiographs (PNG, JPEG, DICOM) into (X, Y) images, their preprocessing, multi-label datalists, and the
multi-label AUC against a rank-based reference."""

from __future__ import annotations

import json
import math

import numpy as np
import pydicom
import pytest
import torch
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from voco_components.data.classification_datalist import load_multilabel_datalist
from voco_components.metrics.multilabel import MultiLabelAUC, auc_summary, multilabel_auc
from voco_components.transforms.radiograph import LoadRadiographd, radiograph_preprocessing, read_radiograph
from voco_components.utils import VolumeError


def pixels(rows: int = 6, cols: int = 4, scale: int = 10) -> np.ndarray:
    """(rows, columns) values that name their position: 10 * row + column."""
    return (scale * np.arange(rows)[:, None] + np.arange(cols)[None]).astype(np.uint16)


def write_dicom(path, values: np.ndarray, photometric: str = "MONOCHROME2", slope: float = 1.0, intercept: float = 0.0):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # digital X-ray
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = pydicom.Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.Rows, ds.Columns = "DX", values.shape[0], values.shape[1]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = values.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# ---------------------------------------------------------------- reading


@pytest.mark.parametrize("mode", ["L", "I;16", "RGB"])
def test_png_is_read_with_x_along_the_columns(tmp_path, mode):
    values = pixels()
    image = Image.fromarray(values.astype(np.uint8)) if mode != "I;16" else Image.fromarray(values * 1000)
    if mode == "RGB":
        image = image.convert("RGB")
    image.save(tmp_path / "x.png")
    out = read_radiograph(tmp_path / "x.png")
    expected = values.T.astype(np.float32) * (1000 if mode == "I;16" else 1)
    assert out.dtype == np.float32 and out.shape == (4, 6)  # (X = columns, Y = rows)
    np.testing.assert_allclose(out, expected, atol=0.5)  # RGB -> luminance of a gray image is the gray value


def test_jpeg_is_read(tmp_path):
    flat = np.full((16, 16), 120, dtype=np.uint8)
    Image.fromarray(flat).save(tmp_path / "x.jpg", quality=95)
    np.testing.assert_allclose(read_radiograph(tmp_path / "x.jpg"), 120.0, atol=2)


@pytest.mark.parametrize("name", ["x.dcm", "no_suffix"])
def test_dicom_applies_the_modality_lut(tmp_path, name):
    values = pixels()
    write_dicom(tmp_path / name, values, slope=2.0, intercept=-5.0)
    np.testing.assert_allclose(read_radiograph(tmp_path / name), 2.0 * values.T - 5.0)


def test_monochrome1_is_inverted_so_that_bone_is_bright(tmp_path):
    values = pixels()
    write_dicom(tmp_path / "m1.dcm", values, photometric="MONOCHROME1")
    write_dicom(tmp_path / "m2.dcm", values.max() + values.min() - values)
    inverted = read_radiograph(tmp_path / "m1.dcm")
    np.testing.assert_allclose(inverted, read_radiograph(tmp_path / "m2.dcm"))
    assert inverted[0, 0] == values.max()  # the lowest stored value is the brightest


def test_bad_files_are_named(tmp_path):
    with pytest.raises(VolumeError, match=r"missing\.png: file not found"):
        read_radiograph(tmp_path / "missing.png")
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(VolumeError, match=r"broken\.png: cannot be read as a radiograph"):
        read_radiograph(tmp_path / "broken.png")
    frames = write_dicom(tmp_path / "multi.dcm", pixels())
    ds = pydicom.dcmread(frames)
    ds.NumberOfFrames = 2
    ds.save_as(frames)
    with pytest.raises(VolumeError, match=r"multi\.dcm: expected a single-frame grayscale"):
        read_radiograph(frames)


def test_load_transform_keeps_the_file_name(tmp_path):
    Image.fromarray(pixels().astype(np.uint8)).save(tmp_path / "a.png")
    out = LoadRadiographd("image")({"image": str(tmp_path / "a.png")})["image"]
    assert out.shape == (1, 4, 6) and out.meta["filename_or_obj"] == str(tmp_path / "a.png")


def test_preprocessing_windows_by_percentiles_and_resizes(tmp_path):
    """A ramp of 0..99 with the 0th/100th percentiles as the window is x / 99 exactly; the 10th/90th clip the tails."""
    ramp = np.tile(np.arange(100, dtype=np.uint8), (100, 1))  # columns 0..99
    item = {"image": str(tmp_path / "ramp.png")}
    Image.fromarray(ramp).save(item["image"])
    full = radiograph_preprocessing(spatial_size=(100, 100), percentiles=(0, 100))(item)
    assert full["image"].shape == (1, 100, 100) and full["image"].dtype == torch.float32
    torch.testing.assert_close(full["image"][0, :, 0], torch.arange(100) / 99.0)
    tails = radiograph_preprocessing(spatial_size=(100, 100), percentiles=(10, 90))(item)
    low, high = np.percentile(np.arange(100), (10, 90))
    expected = np.clip((np.arange(100) - low) / (high - low), 0, 1)
    np.testing.assert_allclose(tails["image"][0, :, 0].numpy(), expected, atol=1e-5)
    small = radiograph_preprocessing(spatial_size=(32, 48))(item)
    assert small["image"].shape == (1, 32, 48)


# ---------------------------------------------------------------- multi-label datalists


def test_multilabel_datalist_reads_lists_and_refuses_bad_labels(tmp_path):
    Image.fromarray(pixels().astype(np.uint8)).save(tmp_path / "a.png")
    good = {"training": [{"image": "a.png", "label": [0, 1, 1]}], "testing": [{"image": "a.png"}]}
    (tmp_path / "d.json").write_text(json.dumps(good))
    (entry,) = load_multilabel_datalist(tmp_path / "d.json", tmp_path, "training", 3)
    assert entry == {"image": str(tmp_path / "a.png"), "label": [0, 1, 1]}
    assert load_multilabel_datalist(tmp_path / "d.json", tmp_path, "testing", 3, require_labels=False)
    with pytest.raises(ValueError, match=r"has no 'label'"):
        load_multilabel_datalist(tmp_path / "d.json", tmp_path, "testing", 3)
    for bad in ([0, 1], [0, 2, 1], 1, [0.5, 1, 0]):
        (tmp_path / "b.json").write_text(json.dumps({"training": [{"image": "a.png", "label": bad}]}))
        with pytest.raises(ValueError, match=r"b\.json: entry .*a\.png has label"):
            load_multilabel_datalist(tmp_path / "b.json", tmp_path, "training", 3)
    assert load_multilabel_datalist(tmp_path, tmp_path, "testing", 3, require_labels=False) == [
        {"image": str(tmp_path / "a.png")}
    ]  # a folder of radiographs


# ---------------------------------------------------------------- multi-label AUC


def pairwise_auc(scores, positive) -> float:
    """The fraction of (positive, negative) pairs ranked right, ties one half: the AUC's definition."""
    pos = [s for s, p in zip(scores, positive, strict=True) if p]
    neg = [s for s, p in zip(scores, positive, strict=True) if not p]
    return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def test_multilabel_auc_matches_pairwise_counting_and_names_absent_classes():
    rng = np.random.default_rng(0)
    scores = np.round(rng.random((30, 4)), 1)  # rounded: many ties
    targets = (rng.random((30, 4)) < 0.4).astype(int)
    targets[:, 2] = 0  # class 2: no positive case
    targets[:, 3] = 1  # class 3: no negative case
    targets[0, 0] = 1
    auc = multilabel_auc(scores, targets)
    for c in (0, 1):
        assert auc[c] == pytest.approx(pairwise_auc(scores[:, c], targets[:, c] == 1))
    assert math.isnan(auc[2]) and math.isnan(auc[3])
    summary = auc_summary(scores, targets, ["a", "b", "c", "d"])
    assert summary["absent"] == {"c": "no positive case", "d": "no negative case"}
    assert summary["num_scored"] == 2 and summary["mean_auc"] == pytest.approx((auc[0] + auc[1]) / 2)
    assert summary["positives"].tolist() == targets.sum(axis=0).tolist()


def test_multilabel_auc_metric_accumulates_batches_and_warns_about_absent_classes(caplog):
    rng = np.random.default_rng(1)
    scores, targets = rng.random((12, 3)), (rng.random((12, 3)) < 0.5).astype(int)
    targets[:, 1] = 0
    metric = MultiLabelAUC(["x", "y", "z"], output_transform=lambda out: out)
    metric.reset()
    metric.update((torch.from_numpy(scores[:5]), torch.from_numpy(targets[:5])))  # a batch tensor
    metric.update(([torch.from_numpy(s) for s in scores[5:]], [torch.from_numpy(t) for t in targets[5:]]))  # decollated
    expected = np.mean([pairwise_auc(scores[:, c], targets[:, c] == 1) for c in (0, 2)])
    assert metric.compute() == pytest.approx(expected)
    assert "left out of the mean AUC: y (no positive case)" in caplog.text
    with pytest.raises(ValueError, match=r"must both be \(B, 3\)"):
        metric.update((torch.zeros(2, 4), torch.zeros(2, 4)))
