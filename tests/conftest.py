"""Shared fixtures: paths, small synthetic CT volumes, DICOM series written from the embedded CTs, and tiny
overrides for the bundles."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from ignite.engine import Events
from monai.bundle import ConfigWorkflow
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from voco_components.apps.demo import DEMO_DIR

REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "data"
BUNDLES = REPO / "bundles"

# voco_pretrain at a size that trains in seconds on CPU
PRETRAIN_TINY = {
    "feature_size": 12,
    "window_size": 4,
    "projector_dim": 64,
    "region_size": [64, 64, 32],
    "grid": [2, 2, 1],
    "roi_size": [32, 32, 32],
    "num_crops": 2,
    "val_num_crops": 4,
    "val_repeats": 2,
    "batch_size": 1,
    "num_workers": 0,
    "min_foreground_size": [16, 16, 8],
    "max_steps": 4,
    "val_every_steps": 2,
    "checkpoint_interval": 2,
    "warmup_steps": 1,
}


# preprocessing settings of a small prepared volume cache (tests of the cache and of DICOM series in it)
CACHE_SETTINGS = {
    "spacing": [3.0, 3.0, 5.0],
    "hu_range": [-175.0, 250.0],
    "foreground_threshold": 0.0,
    "min_foreground_size": [4, 4, 2],
    "spatial_size": [32, 32, 16],
    "allow_non_finite": False,
}


def write_ct(path: Path, shape=(80, 80, 24), spacing=(1.5, 1.5, 5.0), seed: int = 0) -> Path:
    """A CT-like int16 NIfTI: air, a soft-tissue body ellipse, two lungs and a bone, plus noise."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    volume = np.full(shape, -1000.0)
    body = (x / 0.85) ** 2 + (y / 0.7) ** 2 < 1
    volume[body] = 40.0
    for cx in (-0.4, 0.4):
        volume[((x - cx) / 0.3) ** 2 + (y / 0.45) ** 2 < 1] = -800.0
    volume[(x**2 + ((y + 0.55) / 0.12) ** 2 < 0.01) & body] = 700.0
    volume += 20.0 * z + rng.normal(0, 15, size=shape)
    affine = np.diag([*spacing, 1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume.astype(np.int16), affine), str(path))
    return path


# ----------------------------------------------------------------------------------------------- DICOM series

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
"""NIfTI world coordinates (RAS) to DICOM patient coordinates (LPS) and back."""
RT_STRUCTURE_SET = "1.2.840.10008.5.1.4.1.1.481.3"
COMPREHENSIVE_SR = "1.2.840.10008.5.1.4.1.1.88.33"
HU_INTERCEPT = -1024.0


def _ds(value: float) -> str:
    """A decimal string (DICOM DS, at most 16 characters) as exact as it can be."""
    text = f"{value:.10g}"
    assert len(text) <= 16, text
    return text


def dicom_object(sop_class: str, modality: str, series_uid: str, study_uid: str) -> Dataset:
    """The header every test object shares: file meta (explicit VR little endian), patient, study and series."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.PatientID, ds.PatientName = modality, "VOCO-TEST", "Test^Phantom"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.StudyDate = ds.SeriesDate = "20240101"
    return ds


def save_dicom(ds: Dataset, path: Path) -> Path:
    """Write ``ds`` as a DICOM file (preamble, ``DICM``, file meta) with pydicom 3 or 2."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if int(pydicom.__version__.split(".")[0]) >= 3:
        ds.save_as(path, enforce_file_format=True)
    else:
        ds.is_little_endian, ds.is_implicit_VR = True, False
        ds.save_as(path, write_like_original=False)
    return path


def write_dicom_series(
    folder: Path,
    volume: np.ndarray,
    affine: np.ndarray,
    series_uid: str | None = None,
    study_uid: str | None = None,
    names: Sequence[str] | None = None,
    image_type: Sequence[str] = ("ORIGINAL", "PRIMARY", "AXIAL"),
    description: str = "CT",
) -> list[Path]:
    """A CT series, one file per slice ``volume[:, :, k]`` (HU, (X, Y, Z)) of a volume with the NIfTI (RAS) affine
    ``affine``, written from the DICOM definitions so that a reader of the series gives volume and affine back.

    Slice k lies at ``affine @ (0, 0, k)``; the row direction is ``affine``'s first column, the column direction
    its second, both in LPS; PixelSpacing is (row spacing, column spacing) = (|second column|, |first column|); the
    pixels are ``volume[:, :, k].T`` (rows run along Y), stored as int16 with RescaleIntercept -1024. Files are
    named ``names[k]`` (default ``0000.dcm``, ...); InstanceNumber counts down along k, as scanners number from the
    head, so that a reader ordering by it would turn the volume upside down.

    Returns:
        the written files, slice k at index k.
    """
    series_uid, study_uid = series_uid or generate_uid(), study_uid or generate_uid()
    frame_uid = generate_uid()
    columns = np.asarray(affine, dtype=np.float64)[:3, :3]
    row_step, column_step = np.linalg.norm(columns[:, 0]), np.linalg.norm(columns[:, 1])
    orientation = [*(RAS_TO_LPS @ columns[:, 0] / row_step), *(RAS_TO_LPS @ columns[:, 1] / column_step)]
    files = []
    for k in range(volume.shape[2]):
        ds = dicom_object(CTImageStorage, "CT", series_uid, study_uid)
        ds.ImageType = list(image_type)
        ds.SeriesDescription, ds.SeriesNumber, ds.InstanceNumber = description, 1, volume.shape[2] - k
        ds.FrameOfReferenceUID = frame_uid
        position = RAS_TO_LPS @ (np.asarray(affine, dtype=np.float64) @ [0.0, 0.0, k, 1.0])[:3]
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in orientation]
        ds.PixelSpacing = [_ds(column_step), _ds(row_step)]
        ds.SliceThickness = _ds(float(np.linalg.norm(columns[:, 2])))
        stored = np.round(np.asarray(volume[:, :, k], dtype=np.float64).T - HU_INTERCEPT).astype(np.int16)
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.Rows, ds.Columns = stored.shape
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = _ds(HU_INTERCEPT), "1", "HU"
        ds.PixelData = np.ascontiguousarray(stored).astype("<i2").tobytes()
        files.append(save_dicom(ds, folder / (names[k] if names else f"{k:04d}.dcm")))
    return files


@dataclass(frozen=True)
class DicomCT:
    """A DICOM series written from an embedded CT and the same volume as a NIfTI (same voxels, same affine)."""

    folder: Path
    nifti: Path
    uid: str
    study_uid: str


def write_dicom_ct(
    folder: Path, nifti: Path, source: str, crop: Sequence[slice], name_files: bool, uid: str | None = None
) -> DicomCT:
    """``crop`` of the embedded CT ``source`` (RAS) turned to the orientation scanners write (rows run right to
    left, columns front to back: ImageOrientationPatient 1, 0, 0, 0, 1, 0), as series ``uid`` in ``folder`` and as
    the NIfTI ``nifti``. With ``name_files``, slices get shuffled random names without an ending, as archives name
    them."""
    image = nib.load(str(DEMO_DIR / source))
    volume = np.asarray(image.dataobj)[tuple(crop)]
    start = np.array([s.start or 0 for s in crop] + [1.0])
    affine = image.affine.copy()
    affine[:, 3] = image.affine @ start
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    flip[:2, 3] = [volume.shape[0] - 1, volume.shape[1] - 1]
    volume, affine = volume[::-1, ::-1, :], affine @ flip
    uid, study_uid = uid or generate_uid(), generate_uid()
    names = None
    if name_files:
        names = [f"IM{generate_uid()[-10:].replace('.', '')}" for _ in range(volume.shape[2])]
    write_dicom_series(folder, volume, affine, series_uid=uid, study_uid=study_uid, names=names)
    nifti.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.ascontiguousarray(volume), affine), str(nifti))
    return DicomCT(folder, nifti, uid, study_uid)


def add_non_image_files(ct: DicomCT) -> list[Path]:
    """An RT structure set of the series' own SeriesInstanceUID, a structured report of another, and a text file:
    what archives put next to the slices, none of it part of the image."""
    structures = dicom_object(RT_STRUCTURE_SET, "RTSTRUCT", ct.uid, ct.study_uid)
    structures.StructureSetLabel = "organs"
    report = dicom_object(COMPREHENSIVE_SR, "SR", generate_uid(), ct.study_uid)
    report.CompletionFlag, report.VerificationFlag = "COMPLETE", "UNVERIFIED"
    notes = ct.folder / "README.txt"
    notes.write_text("exported from the archive\n")
    return [save_dicom(structures, ct.folder / "RS.dcm"), save_dicom(report, ct.folder / "SR.dcm"), notes]


@pytest.fixture(scope="session")
def dicom_cts(tmp_path_factory) -> tuple[DicomCT, DicomCT]:
    """Two series from the embedded chest CTs in ``<root>/series/``, each in a folder of its own, with reference
    NIfTIs in ``<root>/nifti/``: ``chest_a`` (113 x 97 x 16 voxels of lung1, slices with shuffled names, an
    RTSTRUCT, an SR and a text file beside them) and a folder named after its SeriesInstanceUID (101 x 91 x 14 of
    lung2). Tests copy a folder before changing it.

    In-plane sizes are odd: resampled from 1.5 to 3 mm, an even size lies on a rounding tie of MONAI's ``Spacing``,
    where the DICOM decimal strings (float64) and the NIfTI header (float32) would round to shapes one voxel apart.
    """
    root = tmp_path_factory.mktemp("dicom")
    first = write_dicom_ct(
        root / "series" / "chest_a",
        root / "nifti" / "chest_a.nii.gz",
        "lung1_image.nii.gz",
        (slice(40, 153), slice(50, 147), slice(16, 32)),
        name_files=True,
    )
    add_non_image_files(first)
    uid = generate_uid()
    second = write_dicom_ct(
        root / "series" / uid,
        root / "nifti" / f"{uid}.nii.gz",
        "lung2_image.nii.gz",
        (slice(60, 161), slice(70, 161), slice(20, 34)),
        name_files=False,
        uid=uid,
    )
    return first, second


@pytest.fixture(scope="session")
def schema_file(tmp_path_factory) -> Path:
    """The Model Zoo metadata schema (``tests/data``), copied to a scratch path (verify_metadata then skips the
    download)."""
    target = tmp_path_factory.mktemp("schema") / "schema.json"
    shutil.copy(DATA / "meta_schema_20240725.json", target)
    return target


def bundle_workflow(
    bundle: str,
    configs: Sequence[str] = ("train.json",),
    workflow_type: str = "train",
    initialize: bool = True,
    **settings: Any,
) -> ConfigWorkflow:
    """A ``ConfigWorkflow`` of ``bundles/<bundle>`` over ``configs`` (merged in order), with ``settings`` as
    config overrides, initialised unless ``initialize`` is False."""
    folder = BUNDLES / bundle / "configs"
    wf = ConfigWorkflow(
        config_file=[str(folder / c) for c in configs],
        meta_file=str(folder / "metadata.json"),
        logging_file=str(folder / "logging.conf"),
        workflow_type=workflow_type,
        **settings,
    )
    if initialize:
        wf.initialize()
    return wf


def record_losses(wf: ConfigWorkflow) -> list[float]:
    """Attach a recorder of the per-step loss to the workflow's trainer (its output is decollated)."""
    losses: list[float] = []
    trainer = wf.parser.get_parsed_content("train#trainer")
    trainer.add_event_handler(Events.ITERATION_COMPLETED, lambda e: losses.append(float(e.state.output[0]["loss"])))
    return losses


def exception_chain(error: BaseException | None) -> Iterator[BaseException]:
    """``error``, then its ``__cause__`` (or ``__context__``), and so on: MONAI wraps the errors it re-raises."""
    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def first_in_chain(error: BaseException, kind: type[BaseException]) -> BaseException:
    """The first exception of type ``kind`` in the chain of ``error``; fails the test when there is none."""
    found = next((e for e in exception_chain(error) if isinstance(e, kind)), None)
    assert found is not None, f"no {kind.__name__} in the exception chain of {error!r}"
    return found


@pytest.fixture(scope="session")
def voco_encoder(tmp_path_factory) -> Path:
    """``models/model.pt`` exported by a 4-step ``voco_pretrain`` run at feature_size 12, window 4 (the demo CTs)."""
    root = tmp_path_factory.mktemp("voco_pretrain")
    wf = bundle_workflow("voco_pretrain", bundle_root=str(root), **PRETRAIN_TINY)
    wf.run()
    wf.finalize()
    return root / "models" / "model.pt"


# every bundle folder: the Model Zoo checks and the packaging tests run once per bundle
BUNDLE_NAMES = sorted(p.name for p in BUNDLES.iterdir() if p.is_dir())

# Per bundle, the config overrides under which the Model Zoo checks and the packaging tests run it on CPU:
# a small ``network_def``, the metadata entries that follow from it (``_meta_#...``) and whatever else its
# workflows need to start in a scratch bundle_root. A bundle not listed here gets ``network_def#feature_size: 12``
# when its inference ``network_def`` has one.
CPU_OVERRIDES = {
    "voco_pretrain": {"feature_size": 12, "_meta_#network_data_format#outputs#pred#num_channels": 16 * 12},
    "voco_covid_cls": {"network_def#feature_size": 12, "pretrained": "null"},
    "voco_cxr14_cls": {"network_def#feature_size": 12, "pretrained": "null"},
    "voco_btcv_seg": {
        "feature_size": 12,
        "pretrained": None,
        "dataset_dir": "$str(voco_components.apps.demo.DEMO_DIR)",
        "datalist": "$str(voco_components.apps.demo.DEMO_ORGANS_DATALIST)",
    },
}


def cpu_overrides(bundle: Path) -> dict:
    """Config overrides (``id: value``; ``_meta_#...`` for metadata) that make ``bundle`` small and self-contained."""
    if bundle.name in CPU_OVERRIDES:
        return dict(CPU_OVERRIDES[bundle.name])
    inference = bundle / "configs" / "inference.json"
    network = json.loads(inference.read_text()).get("network_def") if inference.is_file() else None
    return {"network_def#feature_size": 12} if isinstance(network, dict) and "feature_size" in network else {}


def run_bundle_cli(
    bundle: str,
    configs: Sequence[str],
    overrides: dict[str, Any],
    processes: int = 1,
    timeout: int = 900,
    run_id: str = "training",
) -> subprocess.CompletedProcess:
    """``python -m monai.bundle run <run_id>`` of ``bundles/<bundle>`` over ``configs`` (merged in order), with
    ``overrides`` as ``--id=<json>`` flags; with ``processes`` > 1 under ``torchrun`` on this host, one thread each."""
    folder = BUNDLES / bundle / "configs"
    launcher = [sys.executable]
    if processes > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone", "--nnodes=1", f"--nproc_per_node={processes}"]
    command = [
        *launcher, "-m", "monai.bundle", "run", run_id,
        "--config_file", str([str(folder / c) for c in configs]),
        "--meta_file", str(folder / "metadata.json"), "--logging_file", str(folder / "logging.conf"),
        *(f"--{k}={json.dumps(v).replace(' ', '')}" for k, v in overrides.items()),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if processes > 1 else None
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


KILL_SCRIPT = """
import json, os, signal, sys
from pathlib import Path
from ignite.engine import Events
sys.path.insert(0, {tests!r})
from conftest import bundle_workflow, record_losses
wf = bundle_workflow({bundle!r}, {configs!r}, **{settings!r})
losses = record_losses(wf)
def dump(engine):
    Path({log!r}).write_text(json.dumps({{"start": engine.state.iteration - len(losses), "losses": losses}}))
    if engine.state.iteration == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
wf.parser.get_parsed_content("train#trainer").add_event_handler(Events.ITERATION_COMPLETED, dump)
wf.run()
"""


def _train_in_subprocess(
    bundle: str, configs: Sequence[str], settings: dict, log: Path, kill_at: int
) -> subprocess.CompletedProcess:
    """Train ``bundle`` in a fresh Python process, recording its losses in ``log``; SIGKILL it after ``kill_at``."""
    script = KILL_SCRIPT.format(
        tests=str(Path(__file__).parent),
        bundle=bundle,
        configs=tuple(configs),
        settings=settings,
        log=str(log),
        kill_at=kill_at,
    )
    return subprocess.run([sys.executable, "-c", script], cwd=log.parent, capture_output=True, text=True, timeout=900)


def assert_resumes_exactly(
    tmp: Path,
    bundle: str,
    settings: dict,
    kill_at: int,
    checkpoint_at: int,
    configs: Sequence[str] = ("train.json",),
) -> None:
    """Kill a run with SIGKILL after step ``kill_at`` and resume it: the resumed run restarts at the last
    checkpoint (``checkpoint_at``) and repeats the losses, the final weights and the final learning-rate
    schedule and step count of an uninterrupted run."""
    full = bundle_workflow(bundle, configs, **{**settings, "bundle_root": str(tmp / "full")})
    full_losses = record_losses(full)
    full.run()

    killed_root = {**settings, "bundle_root": str(tmp / "killed")}
    killed = _train_in_subprocess(bundle, configs, {**killed_root, "resume": False}, tmp / "killed.json", kill_at)
    assert killed.returncode == -9, killed.stderr[-2000:]
    checkpoints = tmp / "killed" / "outputs" / "checkpoints"
    for path in checkpoints.glob("*.pt"):  # every file on disk is complete
        torch.load(path, weights_only=True)
    assert not list(checkpoints.glob(".*tmp"))
    record = json.loads((tmp / "killed.json").read_text())
    assert record["losses"] == pytest.approx(full_losses[:kill_at], rel=1e-6)

    resumed = _train_in_subprocess(bundle, configs, {**killed_root, "resume": True}, tmp / "resumed.json", -1)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    record = json.loads((tmp / "resumed.json").read_text())
    assert record["start"] == checkpoint_at
    assert record["losses"] == pytest.approx(full_losses[checkpoint_at:], rel=1e-5)
    final_full = torch.load(tmp / "full" / "models" / "model.pt", weights_only=True)
    final_resumed = torch.load(tmp / "killed" / "models" / "model.pt", weights_only=True)
    for key, value in final_full.items():
        torch.testing.assert_close(final_resumed[key], value, rtol=1e-5, atol=1e-6)
    steps = len(full_losses)
    last = [torch.load(tmp / run / "outputs" / "checkpoints" / f"checkpoint_{steps}.pt") for run in ("full", "killed")]
    for state in last:
        assert state["trainer"]["iteration"] == steps
    assert last[1]["lr_scheduler"] == last[0]["lr_scheduler"]
