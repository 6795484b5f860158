"""DICOM series: the files of a folder that form one CT volume, checked from their headers before a pixel is read,
and MONAI's ITK reader given exactly those files in slice-position order."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import itk
import numpy as np
import pydicom
from monai.config import PathLike
from monai.data import ITKReader
from monai.utils import ensure_tuple
from pydicom.errors import InvalidDicomError

from voco_components.utils import VOLUME_SUFFIXES, VolumeError

__all__ = [
    "NON_IMAGE_SOP_CLASSES",
    "ORIENTATION_TOLERANCE",
    "SPACING_TOLERANCE",
    "DicomSeries",
    "is_dicom_file",
    "is_dicom_folder",
    "read_dicom_series",
    "DicomSeriesReader",
]

NON_IMAGE_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "Segmentation",
    "1.2.840.10008.5.1.4.1.1.481.2": "RT Dose",
}
"""Objects with pixel data that are not slices of the CT. Objects without pixel rows (RT Structure Set, RT Plan,
Structured Reports, presentation states, key objects, encapsulated PDF) are recognised by that alone."""
ORIENTATION_TOLERANCE = 1e-3
"""Largest difference between two slices' direction cosines (ImageOrientationPatient) of one volume."""
SPACING_TOLERANCE = 0.05
"""Largest relative deviation of a gap between neighbouring slices from the series' median gap."""
MAX_NAMED = 5
"""Files named in one error message, at most."""


@dataclass(frozen=True)
class DicomSeries:
    """The image slices of one DICOM series folder.

    Attributes:
        folder: the series folder.
        uid: its SeriesInstanceUID.
        files: the slice files, ascending along the slice normal (row cosine x column cosine).
        positions: each slice's position along that normal in mm, same order.
        ignored: DICOM files that are not slices (RTSTRUCT, SR, ...) and files that are not DICOM.
    """

    folder: Path
    uid: str
    files: tuple[Path, ...]
    positions: tuple[float, ...]
    ignored: tuple[Path, ...]


def is_dicom_file(path: PathLike) -> bool:
    """Whether ``path`` is a DICOM file (PS3.10: a 128-byte preamble followed by ``DICM``)."""
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_folder(path: PathLike) -> bool:
    """Whether ``path`` is a folder with at least one DICOM file directly in it (a series folder). Files with a
    volume ending (``.nii.gz``, ...) are not opened, so that a large folder of NIfTI files is listed only."""
    folder = Path(path)
    if not folder.is_dir():
        return False
    return any(
        p.is_file() and is_dicom_file(p) for p in folder.iterdir() if not p.name.lower().endswith(VOLUME_SUFFIXES)
    )


def _slices(count: int) -> str:
    return f"{count} slice" + ("" if count == 1 else "s")


def _names(files: Sequence[Path]) -> str:
    shown = ", ".join(p.name for p in files[:MAX_NAMED])
    return shown + (f" and {len(files) - MAX_NAMED} more" if len(files) > MAX_NAMED else "")


def _floats(header: Any, keyword: str, path: Path, folder: Path) -> np.ndarray:
    value = header.get(keyword)
    if value is None:
        raise VolumeError(f"{folder}: slice {path.name} has no {keyword}; its place in the volume is unknown.")
    return np.asarray([float(v) for v in value], dtype=np.float64)


def _is_localizer(header: Any) -> bool:
    return "LOCALIZER" in [str(t).upper() for t in ensure_tuple(header.get("ImageType", ()))]


def _read_headers(folder: Path) -> tuple[dict[str, list[tuple[Path, Any]]], list[Path]]:
    """Headers (no pixel data) of the image files of ``folder`` by SeriesInstanceUID, and the files left out."""
    series: dict[str, list[tuple[Path, Any]]] = {}
    ignored: list[Path] = []
    for path in sorted(p for p in folder.iterdir() if p.is_file()):
        if not is_dicom_file(path):
            ignored.append(path)
            continue
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError) as exc:
            raise VolumeError(f"{folder}: {path.name} is a damaged DICOM file ({type(exc).__name__}: {exc}).") from exc
        if "Rows" not in header or str(header.get("SOPClassUID", "")) in NON_IMAGE_SOP_CLASSES:
            ignored.append(path)
            continue
        series.setdefault(str(header.get("SeriesInstanceUID", "")), []).append((path, header))
    return series, ignored


def _one_series(folder: Path, series: dict[str, list[tuple[Path, Any]]], ignored: list[Path]) -> str:
    """The SeriesInstanceUID of the folder's only image series."""
    if not series:
        raise VolumeError(
            f"{folder}: no DICOM image slices in this folder ({len(ignored)} other files: {_names(ignored)})."
        )
    if len(series) > 1:
        described = []
        for uid, slices in sorted(series.items(), key=lambda item: -len(item[1])):
            header = slices[0][1]
            text = f"{uid or '<no SeriesInstanceUID>'}: {_slices(len(slices))}"
            if header.get("SeriesDescription"):
                text += f", '{header.SeriesDescription}'"
            if any(_is_localizer(h) for _, h in slices):
                text += ", localizer"
            described.append(text)
        raise VolumeError(
            f"{folder}: holds {len(series)} DICOM image series ({'; '.join(described)}); "
            "a series folder must hold one, so give each series a folder of its own."
        )
    return next(iter(series))


def _check_slices(folder: Path, uid: str, slices: list[tuple[Path, Any]]) -> np.ndarray:
    """Check that the slices of series ``uid`` form one regular volume; returns each slice's position along the
    normal (mm)."""
    localizers = [p for p, h in slices if _is_localizer(h)]
    if localizers:
        raise VolumeError(
            f"{folder}: series {uid} has a localizer (ImageType LOCALIZER) mixed in: {_names(localizers)}; "
            "remove it from the folder."
        )
    frames = [p for p, h in slices if int(h.get("NumberOfFrames", 1) or 1) > 1]
    if frames:
        raise VolumeError(
            f"{folder}: series {uid} has multi-frame images: {_names(frames)}; a series folder holds one slice "
            "per file."
        )
    if len(slices) < 2:
        raise VolumeError(
            f"{folder}: series {uid} has a single slice ({slices[0][0].name}); a volume needs two or more."
        )
    sizes = Counter((int(h.Rows), int(h.Columns)) for _, h in slices)
    if len(sizes) > 1:
        usual = sizes.most_common(1)[0][0]
        odd = [p for p, h in slices if (int(h.Rows), int(h.Columns)) != usual]
        raise VolumeError(
            f"{folder}: series {uid} mixes image sizes: {_slices(len(odd))} ({_names(odd)}) unlike the other "
            f"{_slices(len(slices) - len(odd))} ({usual[0]} rows x {usual[1]} columns)."
        )
    orientations = np.stack([_floats(h, "ImageOrientationPatient", p, folder) for p, h in slices])
    usual = Counter(tuple(np.round(o, 3)) for o in orientations).most_common(1)[0][0]
    odd = [p for (p, _), o in zip(slices, orientations, strict=True) if np.abs(o - usual).max() > ORIENTATION_TOLERANCE]
    if odd:
        raise VolumeError(
            f"{folder}: series {uid} mixes orientations (ImageOrientationPatient): {_slices(len(odd))} "
            f"({_names(odd)}) unlike the other {_slices(len(slices) - len(odd))}; a localizer or a reformatted "
            "image is mixed in, remove it."
        )
    normal = np.cross(orientations[0][:3], orientations[0][3:])
    return np.asarray([float(normal @ _floats(h, "ImagePositionPatient", p, folder)) for p, h in slices])


def _check_spacing(folder: Path, uid: str, files: list[Path], positions: np.ndarray) -> None:
    """Slices at distinct positions, evenly spaced; ``files`` and ``positions`` ascending."""
    gaps = np.diff(positions)
    step = float(np.median(gaps))
    for i in np.flatnonzero(gaps <= SPACING_TOLERANCE * max(step, 1e-6)):
        raise VolumeError(
            f"{folder}: {files[i].name} and {files[i + 1].name} of series {uid} lie at the same position "
            f"({positions[i]:.2f} mm along the slice normal): a slice twice, or two acquisitions in one series."
        )
    uneven = np.flatnonzero(np.abs(gaps - step) > SPACING_TOLERANCE * step)
    if uneven.size:
        i = int(uneven[0])
        missing = int(round(float(gaps[i]) / step)) - 1
        hint = f", about {_slices(missing)} missing there" if missing > 0 else ""
        raise VolumeError(
            f"{folder}: uneven slice spacing in series {uid}: {gaps[i]:.3f} mm between {files[i].name} "
            f"({positions[i]:.2f} mm) and {files[i + 1].name} ({positions[i + 1]:.2f} mm) where the other slices "
            f"are {step:.3f} mm apart{hint} ({uneven.size} uneven gap{'' if uneven.size == 1 else 's'} in all)."
        )


def read_dicom_series(folder: PathLike) -> DicomSeries:
    """Read the headers of every file in ``folder`` (no pixel data) and check that its slices form one volume.

    DICOM files without pixel rows (RTSTRUCT, RTPLAN, SR, ...), segmentation and dose objects, and files that are
    not DICOM are left out. What remains must be one series (one SeriesInstanceUID) of single-frame slices with
    the same size and orientation, no localizer among them, at distinct and evenly spaced positions along the
    slice normal; the slices are ordered by that position, never by file name or InstanceNumber.

    Raises:
        VolumeError: naming the folder and the problem: no image slices, several series, a localizer, a slice of
            another orientation or size, a multi-frame file, a single slice, two slices at one position, or
            uneven spacing (a missing slice); a damaged DICOM file is named too.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise VolumeError(f"{folder}: not a folder; a DICOM series is read from the folder of its slices.")
    series, ignored = _read_headers(folder)
    uid = _one_series(folder, series, ignored)
    slices = series[uid]
    positions = _check_slices(folder, uid, slices)
    order = np.argsort(positions, kind="stable")
    files = [slices[i][0] for i in order]
    _check_spacing(folder, uid, files, positions[order])
    return DicomSeries(folder, uid, tuple(files), tuple(float(p) for p in positions[order]), tuple(ignored))


class DicomSeriesReader(ITKReader):
    """MONAI's ``ITKReader`` for DICOM series folders, each checked by :func:`read_dicom_series` first.

    MONAI's ITK reader takes the first series of a folder with several (after a warning), merges a localizer of the
    series' size into it and averages over a missing slice; this reader raises :class:`VolumeError` instead, then
    gives ITK exactly the checked slices in position order. Array and affine are ITK's (the affine in RAS, as a
    NIfTI of the same series gives). ``verify_suffix`` accepts folders only, so registered next to MONAI's default
    readers it takes the folders and leaves files to them.
    """

    def verify_suffix(self, filename: Sequence[PathLike] | PathLike) -> bool:
        return all(Path(name).is_dir() for name in ensure_tuple(filename))

    def read(self, data: Sequence[PathLike] | PathLike, **kwargs: Any) -> Any:
        """The ITK image of each series folder in ``data`` (one image for one folder)."""
        folders = ensure_tuple(data)
        images = []
        for folder in folders:
            series = read_dicom_series(folder)
            names = [str(p) for p in series.files]
            images.append(itk.imread(names, imageio=itk.GDCMImageIO.New(), **{**self.kwargs, **kwargs}))
        return images if len(folders) > 1 else images[0]
