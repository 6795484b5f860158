"""DICOM series as volumes: reading, checks, datalists, cache keys, and the bundles on series folders.

The series are written slice by slice from the embedded CTs (``dicom_cts`` in conftest.py) next to a NIfTI of the
same voxels and affine, which is the reference: a series must read as that NIfTI reads.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from monai.data.utils import create_file_basename
from monai.transforms import LoadImage

from conftest import CACHE_SETTINGS as SETTINGS
from conftest import PRETRAIN_TINY, DicomCT, bundle_workflow, run_bundle_cli, write_dicom_ct, write_dicom_series
from voco_components.apps.demo import DEMO_DIR
from voco_components.data.datalists import load_datalists, volume_files
from voco_components.data.dataset import hash_entry_and_files
from voco_components.data.prepare import Preparer
from voco_components.data.volume_cache import VolumeCache, entry_text, read_volume, source_stat
from voco_components.transforms import LoadVolumed, ct_preprocessing, read_dicom_series, volume_name_formatter
from voco_components.utils import VolumeError, volume_stem

SAGITTAL = np.array([[0.0, 0.0, -2.5, 0.0], [1.5, 0.0, 0.0, -120.0], [0.0, 1.5, 0.0, -800.0], [0.0, 0.0, 0.0, 1.0]])
"""A one-slice localizer's grid: rows run front to back, columns foot to head, the slice normal left to right."""


def nifti(ct: DicomCT) -> tuple[np.ndarray, np.ndarray]:
    """Voxels and affine of the reference NIfTI, read by nibabel."""
    image = nib.load(str(ct.nifti))
    return np.asarray(image.dataobj), image.affine


def load(path: Path | str) -> torch.Tensor:
    return LoadVolumed("image", ensure_channel_first=True)({"image": str(path)})["image"]


def copy_series(ct: DicomCT, target: Path) -> Path:
    shutil.copytree(ct.folder, target)
    return target


# ------------------------------------------------------------------------------------------- reading


def test_a_series_reads_as_the_nifti_of_the_same_volume(dicom_cts):
    for ct in dicom_cts:
        volume, affine = nifti(ct)
        image = load(ct.folder)
        assert image.shape == (1, *volume.shape)
        np.testing.assert_array_equal(image[0].numpy(), volume.astype(np.float32))
        np.testing.assert_allclose(image.affine.numpy(), affine, atol=1e-4)
        assert image.meta["filename_or_obj"] == str(ct.folder)


def test_slices_are_ordered_by_position_and_non_image_files_left_out(dicom_cts):
    """Slice files have shuffled names and InstanceNumbers counting down; an RTSTRUCT of the same series, an SR
    and a text file lie beside them."""
    ct = dicom_cts[0]
    series = read_dicom_series(ct.folder)
    volume, affine = nifti(ct)
    assert series.uid == ct.uid and len(series.files) == volume.shape[2]
    assert sorted(p.name for p in series.ignored) == ["README.txt", "RS.dcm", "SR.dcm"]
    expected = affine[2, 3] + affine[2, 2] * np.arange(volume.shape[2])  # z of slice k; the normal is +z
    np.testing.assert_allclose(series.positions, expected, atol=1e-4)
    numbers = [int(pydicom.dcmread(p, stop_before_pixels=True).InstanceNumber) for p in series.files]
    assert numbers == sorted(numbers, reverse=True)


def test_an_oblique_series_reads_as_its_nifti(tmp_path):
    """A crop of an embedded CT on a rotated, anisotropic grid: same voxels, same affine."""
    source = nib.load(str(DEMO_DIR / "lung1_image.nii.gz"))
    volume = np.asarray(source.dataobj)[80:120, 90:126, 20:26]
    angle_z, angle_x = np.deg2rad(17.0), np.deg2rad(9.0)
    rotate_z = np.array([[np.cos(angle_z), -np.sin(angle_z), 0], [np.sin(angle_z), np.cos(angle_z), 0], [0, 0, 1]])
    rotate_x = np.array([[1, 0, 0], [0, np.cos(angle_x), -np.sin(angle_x)], [0, np.sin(angle_x), np.cos(angle_x)]])
    affine = np.eye(4)
    affine[:3, :3] = rotate_z @ rotate_x @ np.diag([-0.8, -0.7, 2.5])
    affine[:3, 3] = [90.0, 110.0, -40.0]
    write_dicom_series(tmp_path / "oblique", volume, affine)
    image = load(tmp_path / "oblique")
    np.testing.assert_array_equal(image[0].numpy(), volume.astype(np.float32))
    np.testing.assert_allclose(image.affine.numpy(), affine, atol=1e-4)


def add_second_series(folder: Path, ct: DicomCT) -> str:
    volume, affine = nifti(ct)
    write_dicom_series(folder, volume[:, :, :3], affine, names=["B1", "B2", "B3"], description="bone kernel")
    return "2 DICOM image series"


def remove_a_slice(folder: Path, ct: DicomCT) -> str:
    read_dicom_series(folder).files[7].unlink()
    return "uneven slice spacing"


def add_localizer(folder: Path, ct: DicomCT) -> str:
    volume, _ = nifti(ct)
    image_type = ("ORIGINAL", "PRIMARY", "LOCALIZER")
    write_dicom_series(folder, volume[:, :, :1], SAGITTAL, series_uid=ct.uid, names=["scout"], image_type=image_type)
    return "localizer (ImageType LOCALIZER)"


def add_unmarked_sagittal_slice(folder: Path, ct: DicomCT) -> str:
    volume, _ = nifti(ct)
    write_dicom_series(folder, volume[:, :, :1], SAGITTAL, series_uid=ct.uid, names=["scout"])
    return "mixes orientations"


def add_localizer_series(folder: Path, ct: DicomCT) -> str:
    volume, _ = nifti(ct)
    image_type = ("ORIGINAL", "PRIMARY", "LOCALIZER")
    write_dicom_series(folder, volume[:, :, :1], SAGITTAL, names=["scout"], image_type=image_type)
    return "localizer); a series folder must hold one"


def copy_a_slice(folder: Path, ct: DicomCT) -> str:
    shutil.copy(read_dicom_series(folder).files[3], folder / "again")
    return "lie at the same position"


def keep_only_non_image_files(folder: Path, ct: DicomCT) -> str:
    for path in read_dicom_series(folder).files:
        path.unlink()
    return "no DICOM image slices"


@pytest.mark.parametrize(
    "damage",
    [
        add_second_series,
        remove_a_slice,
        add_localizer,
        add_unmarked_sagittal_slice,
        add_localizer_series,
        copy_a_slice,
        keep_only_non_image_files,
    ],
)
def test_a_broken_series_is_reported_with_its_folder(tmp_path, dicom_cts, damage):
    folder = copy_series(dicom_cts[0], tmp_path / "broken")
    problem = damage(folder, dicom_cts[0])
    with pytest.raises(VolumeError) as info:
        load(folder)
    message = str(info.value)
    assert message.startswith(f"{folder}: ") and problem in message


def test_the_missing_slice_is_located(tmp_path, dicom_cts):
    folder = copy_series(dicom_cts[0], tmp_path / "gap")
    series = read_dicom_series(folder)
    series.files[7].unlink()
    with pytest.raises(VolumeError) as info:
        read_dicom_series(folder)
    step = series.positions[1] - series.positions[0]
    expected = (
        f"{2 * step:.3f} mm between {series.files[6].name} ({series.positions[6]:.2f} mm) and "
        f"{series.files[8].name} ({series.positions[8]:.2f} mm) where the other slices are {step:.3f} mm apart, "
        "about 1 slice missing there"
    )
    assert expected in str(info.value)


# ------------------------------------------------------------------------------------------- datalists


def test_a_folder_of_one_series_is_one_volume(dicom_cts):
    assert volume_files(dicom_cts[0].folder) == [str(dicom_cts[0].folder)]
    assert load_datalists(str(dicom_cts[0].folder), "/unused") == [{"image": str(dicom_cts[0].folder)}]


def test_a_folder_of_series_folders_is_one_volume_per_series(dicom_cts, tmp_path):
    root = dicom_cts[0].folder.parent
    assert volume_files(root) == sorted(str(ct.folder) for ct in dicom_cts)
    mixed = tmp_path / "mixed"
    for ct in dicom_cts:
        copy_series(ct, mixed / ct.folder.name)
    shutil.copy(dicom_cts[0].nifti, mixed / "extra.nii.gz")
    (mixed / "notes").mkdir()
    (mixed / "notes" / "read_me.txt").write_text("no images here")
    expected = sorted([str(mixed / "extra.nii.gz"), *(str(mixed / ct.folder.name) for ct in dicom_cts)])
    assert volume_files(mixed) == expected
    assert volume_files(str(mixed / "**")) == expected  # a pattern finds series folders at any depth


def test_a_datalist_entry_may_name_a_series_folder(dicom_cts, tmp_path):
    root = dicom_cts[0].folder.parent.parent
    datalist = tmp_path / "datalist.json"
    entries = [{"image": "series/chest_a/"}, f"series/{dicom_cts[1].folder.name}"]
    datalist.write_text(json.dumps({"training": entries}))
    data = load_datalists(datalist, root)
    assert data == [{"image": str(ct.folder)} for ct in dicom_cts]
    for entry, ct in zip(data, dicom_cts, strict=True):
        np.testing.assert_array_equal(load(entry["image"])[0].numpy(), nifti(ct)[0])


def test_a_series_folder_with_volume_files_in_it_is_refused(dicom_cts, tmp_path):
    folder = copy_series(dicom_cts[0], tmp_path / "both")
    shutil.copy(dicom_cts[0].nifti, folder / "chest_a.nii.gz")
    with pytest.raises(ValueError, match=f"{folder}: holds DICOM files and volume files"):
        volume_files(folder)


def test_outputs_are_named_after_the_series_folder(dicom_cts):
    """``volume_stem`` keeps a folder's whole name; the SaveImage formatter gives MONAI's file name for it."""
    for ct in dicom_cts:
        assert volume_stem(ct.folder) == ct.folder.name
        subject = volume_name_formatter({"filename_or_obj": str(ct.folder)}, None)["subject"]
        name = create_file_basename("seg", subject, "/out", separate_folder=False, makedirs=False)
        assert name == f"/out/{ct.folder.name}_seg"
    assert volume_name_formatter({"filename_or_obj": "/data/case_01.nii.gz"}, None)["subject"] == (
        "/data/case_01.nii.gz"
    )


# ------------------------------------------------------------------------------------------- caches


def test_the_cache_keys_change_when_a_slice_changes(dicom_cts, tmp_path):
    folder = copy_series(dicom_cts[0], tmp_path / "series")
    entry = {"image": str(folder)}
    stat, key = source_stat(folder), hash_entry_and_files(entry)
    assert source_stat(folder) == stat and hash_entry_and_files(entry) == key
    files = sorted(p for p in folder.iterdir())
    assert stat[1] == sum(p.stat().st_size for p in files)
    first = read_dicom_series(folder).files[0]
    os.utime(first, ns=(1, 1))
    touched = source_stat(folder)
    assert touched != stat and hash_entry_and_files(entry) != key
    first.unlink()
    assert source_stat(folder) not in (stat, touched)


def test_prepare_caches_a_series_as_it_caches_its_nifti_and_again_when_a_slice_changes(dicom_cts, tmp_path):
    series = [{"image": str(ct.folder)} for ct in dicom_cts]
    niftis = [{"image": str(ct.nifti)} for ct in dicom_cts]
    cache = VolumeCache(tmp_path / "cache", SETTINGS)
    summary = Preparer(cache, series + niftis, workers=0, progress=False).run()
    assert (summary["done"], summary["failed"]) == (4, {})
    records = cache.records()
    for ct, from_series, from_nifti in zip(dicom_cts, series, niftis, strict=True):
        record, reference = records[entry_text(from_series)], records[entry_text(from_nifti)]
        assert record["original_shape"] == list(nifti(ct)[0].shape)
        assert record["original_spacing"] == reference["original_spacing"]
        array, _ = read_volume(cache.folder / record["file"])
        expected, _ = read_volume(cache.folder / reference["file"])
        np.testing.assert_array_equal(array, expected)

    copy = copy_series(dicom_cts[0], tmp_path / "copy")
    entry = {"image": str(copy)}
    Preparer(cache, [entry], workers=0, progress=False).run()
    os.utime(read_dicom_series(copy).files[5], ns=(1, 1))
    again = Preparer(cache, [entry], workers=0, progress=False).run()
    assert (again["done"], again["skipped"]) == (1, 0)


def test_the_ct_preprocessing_of_a_series_equals_that_of_its_nifti(dicom_cts):
    pipeline = ct_preprocessing(spacing=(3.0, 3.0, 5.0))
    ct = dicom_cts[1]
    from_series = pipeline({"image": str(ct.folder)})["image"]
    from_nifti = pipeline({"image": str(ct.nifti)})["image"]
    assert from_series.shape == from_nifti.shape
    torch.testing.assert_close(from_series, from_nifti, atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------------- bundles


@pytest.mark.slow
def test_pretraining_on_a_folder_of_series_through_the_command_line(dicom_cts, tmp_path):
    root = dicom_cts[0].folder.parent
    overrides = {**PRETRAIN_TINY, "bundle_root": str(tmp_path), "max_steps": 2, "val_every_steps": 2}
    overrides |= {"datalist": str(root), "val_datalist": str(dicom_cts[1].folder)}
    result = run_bundle_cli("voco_pretrain", ["train.json"], overrides)
    assert result.returncode == 0, result.stderr[-3000:]
    assert (tmp_path / "models" / "model.pt").is_file()


def test_prepare_on_a_datalist_of_series_folders(dicom_cts, tmp_path):
    root = dicom_cts[0].folder.parent.parent
    datalist = tmp_path / "datalist.json"
    ct_a, ct_b = dicom_cts
    datalist.write_text(
        json.dumps({"training": [{"image": "series/chest_a/"}], "validation": [f"series/{ct_b.folder.name}"]})
    )
    settings = {**PRETRAIN_TINY, "bundle_root": str(tmp_path), "dataset_dir": str(root), "datalist": str(datalist)}
    settings |= {"val_datalist": str(datalist), "prepare_workers": 0}
    summary = bundle_workflow("voco_pretrain", **settings).parser.get_parsed_content("preparer").run()
    assert (summary["done"], summary["failed"]) == (2, {})
    wf = bundle_workflow("voco_pretrain", **settings)
    assert wf.parser.get_parsed_content("train#data") == [{"image": str(ct_a.folder)}]
    assert not wf.parser.get_parsed_content("train#dataset").volumes.missing


def test_pretraining_names_a_broken_series_and_skips_it_on_request(dicom_cts, tmp_path):
    broken = copy_series(dicom_cts[0], tmp_path / "dicom" / "broken")
    read_dicom_series(broken).files[7].unlink()
    good = copy_series(dicom_cts[1], tmp_path / "dicom" / "good")
    settings = {**PRETRAIN_TINY, "bundle_root": str(tmp_path / "run"), "val_datalist": str(good)}
    dataset = bundle_workflow("voco_pretrain", datalist=str(broken), **settings).parser.get_parsed_content(
        "train#dataset"
    )
    with pytest.raises(VolumeError, match="uneven slice spacing") as info:
        dataset[0]
    assert str(info.value).startswith(f"{broken}: ")
    skipping = bundle_workflow("voco_pretrain", datalist=str(tmp_path / "dicom"), on_bad_volume="skip", **settings)
    dataset = skipping.parser.get_parsed_content("train#dataset")
    crops = int(np.prod(PRETRAIN_TINY["grid"])) + PRETRAIN_TINY["num_crops"]  # base and random crops of a sample
    assert [dataset[i]["image"].shape[0] for i in range(2)] == [crops, crops]
    assert [dataset.data[i]["image"] for i in dataset.bad_volumes] == [str(broken)]


def seg_workflow(root: Path, **overrides):
    tiny = {"class_names": ["background", "lungs", "bone", "soft tissue"], "feature_size": 12, "window_size": 4}
    tiny |= {"roi_size": [64, 64, 64], "sw_batch_size": 2, "spacing": [3.0, 3.0, 3.0], "pretrained": None}
    tiny |= {"num_samples": 1, "num_workers": 0, "warmup_steps": 1}
    return bundle_workflow("voco_btcv_seg", ("inference.json",), "infer", bundle_root=str(root), **tiny, **overrides)


@pytest.mark.slow
def test_segmentation_of_series_is_saved_as_nifti_on_each_series_grid(dicom_cts, tmp_path):
    """Inference on a folder of series folders writes ``<folder name>_seg.nii.gz`` with the shape and affine of
    the series as MONAI's ITK reader reads it, and the labels of the same inference on the NIfTIs."""
    network = seg_workflow(tmp_path).parser.get_parsed_content("network_def")
    (tmp_path / "models").mkdir()
    torch.save(network.state_dict(), tmp_path / "models" / "model.pt")
    seg_workflow(tmp_path, datalist=str(dicom_cts[0].folder.parent)).run()
    seg_workflow(tmp_path, datalist=str(dicom_cts[0].nifti.parent), output_dir=str(tmp_path / "from_nifti")).run()
    outputs = tmp_path / "outputs" / "predictions"
    assert sorted(p.name for p in outputs.iterdir()) == sorted(f"{ct.folder.name}_seg.nii.gz" for ct in dicom_cts)
    for ct in dicom_cts:
        series = LoadImage(reader="ITKReader", image_only=True)(str(ct.folder))
        labels = nib.load(str(outputs / f"{ct.folder.name}_seg.nii.gz"))
        assert labels.shape == tuple(series.shape)
        np.testing.assert_allclose(labels.affine, series.affine.numpy(), atol=1e-4)
        from_nifti = nib.load(str(tmp_path / "from_nifti" / f"{ct.folder.name}_seg.nii.gz"))
        # the decimal strings of the series and the float32 NIfTI header differ by ~1e-6 mm: a near-tie may flip
        agreement = np.mean(np.asarray(labels.dataobj) == np.asarray(from_nifti.dataobj))
        assert agreement > 0.9999, agreement


@pytest.mark.slow
def test_segmentation_trains_on_a_series_with_a_nifti_label(dicom_cts, tmp_path):
    ct = dicom_cts[0]
    volume, affine = nifti(ct)
    labels = np.where(volume < -500, 1, np.where(volume > 400, 2, 3)).astype(np.uint8)
    nib.save(nib.Nifti1Image(labels, affine), str(tmp_path / "label.nii.gz"))
    case = {"image": str(ct.folder), "label": str(tmp_path / "label.nii.gz")}
    (tmp_path / "datalist.json").write_text(json.dumps({"training": [case], "validation": [case]}))
    tiny = {"class_names": ["background", "lungs", "bone", "soft tissue"], "feature_size": 12, "window_size": 4}
    tiny |= {"roi_size": [64, 64, 64], "sw_batch_size": 2, "spacing": [3.0, 3.0, 3.0], "pretrained": None}
    tiny |= {"num_samples": 1, "num_workers": 0, "warmup_steps": 1, "max_epochs": 1, "val_interval": 1}
    wf = bundle_workflow(
        "voco_btcv_seg", bundle_root=str(tmp_path), datalist=str(tmp_path / "datalist.json"), dataset_dir="/", **tiny
    )
    wf.run()
    assert (tmp_path / "models" / "model.pt").is_file()


def cls_workflow(root: Path, configs=("inference.json",), workflow_type="infer", **overrides):
    tiny = {"feature_size": 12, "window_size": 4, "spatial_size": [32, 32, 32], "batch_size": 1, "num_workers": 0}
    return bundle_workflow("voco_covid_cls", configs, workflow_type, bundle_root=str(root), **tiny, **overrides)


def test_classification_of_series_folders_equals_that_of_their_niftis(dicom_cts, tmp_path):
    network = cls_workflow(tmp_path, dataset_dir=str(tmp_path)).parser.get_parsed_content("network")
    for name, value in network.named_parameters():
        if name.startswith("head."):  # the head starts at zero: give it values, so that scores differ
            torch.nn.init.normal_(value, std=0.05)
    (tmp_path / "models").mkdir()
    torch.save(network.state_dict(), tmp_path / "models" / "model.pt")
    results = {}
    for form, datalist in (("series", dicom_cts[0].folder.parent), ("nifti", dicom_cts[0].nifti.parent)):
        out = tmp_path / form
        cls_workflow(tmp_path, dataset_dir=str(tmp_path), datalist=str(datalist), inference_dir=str(out)).run()
        results[form] = json.loads((out / "probabilities.json").read_text())["volumes"]
    assert [v["image"] for v in results["series"]] == sorted(str(ct.folder) for ct in dicom_cts)
    for series, reference in zip(results["series"], results["nifti"], strict=True):
        assert volume_stem(series["image"]) == volume_stem(reference["image"])
        assert series["probabilities"] == pytest.approx(reference["probabilities"], abs=1e-4)


@pytest.mark.slow
def test_classification_trains_on_series_folders(dicom_cts, tmp_path):
    entries = [{"image": str(ct.folder), "label": i} for i, ct in enumerate(dicom_cts)]
    (tmp_path / "datalist.json").write_text(json.dumps({"training": entries, "validation": entries}))
    settings = {"datalist": str(tmp_path / "datalist.json"), "dataset_dir": "/", "fold": None, "pretrained": None}
    wf = cls_workflow(tmp_path, ("train.json",), "train", max_epochs=1, warmup_steps=1, **settings)
    wf.run()
    assert (tmp_path / "models" / "model.pt").is_file()


def test_a_series_written_in_its_own_folder_is_found_by_a_pattern(tmp_path):
    """A TCIA-style tree (patient / study / series): ``<root>/**`` gives the series folder."""
    ct = write_dicom_ct(
        tmp_path / "tcia" / "patient_1" / "study_1" / "series_1",
        tmp_path / "ref.nii.gz",
        "upper_abdomen_image.nii.gz",
        (slice(100, 140), slice(100, 150), slice(0, 6)),
        name_files=False,
    )
    assert volume_files(str(tmp_path / "tcia" / "**")) == [str(ct.folder)]
