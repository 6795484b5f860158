"""CC-CCII (China Consortium of Chest CT Image Investigation) to NIfTI volumes and a k-fold classification datalist.

The released dataset stores each CT scan as a folder of 2D slice images::

    <root>/<CLASS>/<patient_id>/<scan_id>/<slice>.png|.jpg      CLASS in NCP, CP, Normal

:func:`find_scans` lists the scans, :func:`convert_scan` stacks one scan's slices into an (X, Y, Z) uint8
NIfTI volume, and :func:`convert_dataset` converts every scan and writes a decathlon-style datalist whose
folds are split by patient and stratified by class. :func:`fold_split` reads one fold back as
(train, validation) entries. Command line::

    python -m voco_components.apps.ccii ROOT OUTPUT_DIR [--num_folds 3] [--seed 0]

**Orientation.** Voxel ``(x, y, z)`` of a volume is the pixel at column ``x`` and row ``y`` of slice number
``z``: axis 0 runs along the image width (left to right), axis 1 along the image height (top to bottom),
axis 2 along increasing slice numbers. The slices carry no physical spacing and no patient orientation,
so the affine is only ``diag(spacing)`` (1 mm by default): it is a placeholder with no anatomical
meaning, and a voxel's world position says nothing about the patient's left/right or head/feet.

Patient ids are taken per class folder: ``NCP/12`` and ``CP/12`` are different patients for the split
(a warning is logged when an id appears in more than one class)."""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import math
import random
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image, UnidentifiedImageError

from voco_components.data.folds import read_folds
from voco_components.utils import atomic_write

__all__ = [
    "CLASS_NAMES",
    "IMAGE_SUFFIXES",
    "Scan",
    "find_scans",
    "convert_scan",
    "convert_dataset",
    "format_fold_table",
    "main",
]


logger = logging.getLogger(__name__)


CLASS_NAMES: tuple[str, ...] = ("NCP", "CP", "Normal")
"""Class folders in label order: 0 = novel coronavirus pneumonia, 1 = common pneumonia, 2 = normal control."""


IMAGE_SUFFIXES: frozenset[str] = frozenset({".png", ".jpg", ".jpeg"})
"""Slice file suffixes (case-insensitive); other files in a scan folder (``Thumbs.db``, ...) are ignored."""


_SLICE_NUMBER = re.compile(r"[0-9]+")


# Pillow modes with 8 bits per channel, which "L" (luminance) conversion keeps exact; 16-bit or float
# slices would be clipped, so they are refused.
_EIGHT_BIT_MODES = frozenset({"1", "L", "LA", "La", "P", "PA", "RGB", "RGBA", "RGBa", "RGBX", "CMYK", "YCbCr", "LAB"})


_GZIP_LEVEL = 1  # nibabel's own default for .nii.gz: fast, and decompression speed does not depend on it


@dataclass(frozen=True)
class Scan:
    """One CT scan of the release: a folder of slice images.

    Attributes:
        class_name: ``NCP``, ``CP`` or ``Normal``.
        label: the class index in :data:`CLASS_NAMES` (0, 1 or 2).
        patient_id: the patient folder's name.
        scan_id: the scan folder's name.
        folder: the scan folder.
        slice_files: the slice images, sorted by their integer file name (``2.png`` before ``10.png``).
    """

    class_name: str
    label: int
    patient_id: str
    scan_id: str
    folder: Path
    slice_files: tuple[Path, ...]

    @property
    def name(self) -> str:
        """``<CLASS>_<patient>_<scan>``, the stem of the converted volume's file name."""
        return f"{self.class_name}_{self.patient_id}_{self.scan_id}"


def _natural_key(name: str) -> tuple[int, int, str]:
    """Sort integer names numerically, before any other names (sorted as text)."""
    return (0, int(name), name) if _SLICE_NUMBER.fullmatch(name) else (1, 0, name)


def _visible_entries(folder: Path, directories: bool) -> list[Path]:
    """The folders (or files) directly in ``folder``, skipping hidden names such as ``.DS_Store`` and ``._0.png``."""
    return sorted(
        (p for p in folder.iterdir() if not p.name.startswith(".") and p.is_dir() == directories),
        key=lambda p: _natural_key(p.name),
    )


def _slice_files(folder: Path) -> tuple[Path, ...]:
    """The slice images of a scan folder, sorted by slice number; see :func:`find_scans` for the errors."""
    numbered: dict[int, Path] = {}
    bad: list[str] = []
    for path in _visible_entries(folder, directories=False):
        if path.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if not _SLICE_NUMBER.fullmatch(path.stem):
            bad.append(path.name)
            continue
        number = int(path.stem)
        if number in numbered:
            raise ValueError(
                f"{folder}: slices {numbered[number].name} and {path.name} have the same number {number}, "
                "so the slice order is ambiguous."
            )
        numbered[number] = path
    if bad:
        shown = ", ".join(bad[:5]) + (f", ... ({len(bad)} in all)" if len(bad) > 5 else "")
        raise ValueError(
            f"{folder}: slice file names must be integers giving the slice order (e.g. 0000.png), found {shown}."
        )
    if not numbered:
        raise ValueError(
            f"{folder}: scan folder has no slice images ({', '.join(sorted(IMAGE_SUFFIXES))} files named by integers)."
        )
    return tuple(numbered[n] for n in sorted(numbered))


def find_scans(root: str | Path) -> list[Scan]:
    """List the scans of a CC-CCII release, ``<root>/<CLASS>/<patient_id>/<scan_id>/<slice>.png|.jpg``.

    Hidden entries (names starting with ``.``) are skipped at every level, as are files next to the
    class, patient and scan folders and non-image files inside scan folders (e.g. ``Thumbs.db``).

    Args:
        root: the folder holding the class folders ``NCP``, ``CP`` and ``Normal``.

    Returns:
        the scans ordered by class (label order), then patient, then scan (integer names numerically).

    Raises:
        FileNotFoundError: ``root`` does not exist or has none of the class folders. A class folder that
            is missing while others exist is only logged as a warning.
        ValueError: a patient folder has no scan folders; a scan folder has no slice images, a slice
            name that is not an integer, or two slices with the same number. The message names the folder.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: CC-CCII root folder not found.")
    present = [name for name in CLASS_NAMES if (root / name).is_dir()]
    if not present:
        found = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise FileNotFoundError(
            f"{root}: none of the class folders {', '.join(CLASS_NAMES)} found here (found folders: {found}); "
            "expected <root>/<CLASS>/<patient_id>/<scan_id>/<slice>.png."
        )
    for name in CLASS_NAMES:
        if name not in present:
            logger.warning("%s: class folder %s is missing; the datalist will have no %s scans.", root, name, name)
    scans: list[Scan] = []
    for label, class_name in enumerate(CLASS_NAMES):
        if class_name not in present:
            continue
        for patient in _visible_entries(root / class_name, directories=True):
            scan_folders = _visible_entries(patient, directories=True)
            if not scan_folders:
                raise ValueError(
                    f"{patient}: patient folder has no scan folders "
                    "(expected <root>/<CLASS>/<patient_id>/<scan_id>/<slice>.png)."
                )
            for folder in scan_folders:
                scans.append(Scan(class_name, label, patient.name, folder.name, folder, _slice_files(folder)))
    return scans


def _check_spacing(spacing: Sequence[float]) -> tuple[float, float, float]:
    values = tuple(float(s) for s in spacing)
    if len(values) != 3 or not all(math.isfinite(s) and s > 0 for s in values):
        raise ValueError(f"spacing must be three positive finite numbers (X, Y, Z), got {tuple(spacing)}.")
    return values  # type: ignore[return-value]


def _read_slice(path: Path) -> np.ndarray:
    """One slice as a (rows, columns) uint8 array; colour images become their luminance (Pillow mode "L")."""
    try:
        with Image.open(path) as image:
            if image.mode not in _EIGHT_BIT_MODES:
                raise ValueError(
                    f"{path}: image mode {image.mode!r} is not 8-bit; CC-CCII slices are 8-bit grayscale or RGB."
                )
            return np.asarray(image.convert("L"), dtype=np.uint8)
    except (OSError, UnidentifiedImageError, SyntaxError) as exc:
        raise ValueError(f"{path}: cannot read the slice image ({type(exc).__name__}: {exc}).") from exc


def convert_scan(
    scan: Scan, output_path: str | Path, spacing: Sequence[float] = (1.0, 1.0, 1.0)
) -> tuple[int, int, int]:
    """Stack a scan's slices into an (X, Y, Z) uint8 NIfTI volume, written atomically.

    ``volume[x, y, z]`` is the pixel at row ``y``, column ``x`` of the ``z``-th slice in numeric order
    (X = image width, Y = image height). The affine is ``diag(spacing)``: CC-CCII slices carry no
    physical spacing, so the default 1 mm is a placeholder, not a measurement.

    Args:
        scan: a scan from :func:`find_scans`.
        output_path: the ``.nii.gz`` (or ``.nii``) file to write; its folder is created.
        spacing: voxel size (X, Y, Z) written into the affine and header.

    Returns:
        the volume shape (width, height, number of slices).

    Raises:
        ValueError: ``output_path`` is not ``.nii``/``.nii.gz``, ``spacing`` is not three positive numbers,
            a slice cannot be read or is not 8-bit, or the slices differ in size (naming the scan folder).
    """
    output_path = Path(output_path)
    compressed = output_path.name.endswith(".nii.gz")
    if not compressed and output_path.suffix != ".nii":
        raise ValueError(f"{output_path}: output must be a .nii.gz or .nii file.")
    spacing = _check_spacing(spacing)
    if not scan.slice_files:
        raise ValueError(f"{scan.folder}: scan has no slice files.")
    slices: list[np.ndarray] = []
    for path in scan.slice_files:
        pixels = _read_slice(path)
        if slices and pixels.shape != slices[0].shape:
            first = scan.slice_files[0]
            raise ValueError(
                f"{scan.folder}: slices differ in size: {first.name} is {slices[0].shape[1]}x{slices[0].shape[0]} "
                f"(width x height), {path.name} is {pixels.shape[1]}x{pixels.shape[0]}."
            )
        slices.append(pixels)
    # (rows, columns, Z) -> (columns, rows, Z) = (X, Y, Z)
    volume = np.ascontiguousarray(np.stack(slices, axis=-1).transpose(1, 0, 2))
    affine = np.diag([*spacing, 1.0])
    image = nib.Nifti1Image(volume, affine)
    image.header.set_qform(affine, code=2)
    image.header.set_sform(affine, code=2)
    image.header.set_xyzt_units("mm")
    payload = image.to_bytes()
    if compressed:
        payload = gzip.compress(payload, compresslevel=_GZIP_LEVEL, mtime=0)
    atomic_write(output_path, lambda handle: handle.write(payload))
    return tuple(int(s) for s in volume.shape)  # type: ignore[return-value]


def _assign_folds(scans: Sequence[Scan], num_folds: int, seed: int) -> dict[tuple[str, str], int]:
    """Fold of each (class, patient): per class, the sorted patients are shuffled with ``seed`` and dealt
    round-robin, the deal continuing across classes so that fold sizes also stay within one patient."""
    rng = random.Random(seed)
    folds: dict[tuple[str, str], int] = {}
    position = 0
    for class_name in CLASS_NAMES:
        patients = sorted({s.patient_id for s in scans if s.class_name == class_name}, key=_natural_key)
        rng.shuffle(patients)
        for patient in patients:
            folds[(class_name, patient)] = position % num_folds
            position += 1
    return folds


def convert_dataset(
    root: str | Path,
    output_dir: str | Path,
    num_folds: int = 3,
    seed: int = 0,
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    skip_existing: bool = True,
) -> Path:
    """Convert every scan under ``root`` and write a k-fold datalist.

    Volumes go to ``<output_dir>/images/<CLASS>_<patient>_<scan>.nii.gz``. ``<output_dir>/datalist.json``
    holds ``fold0`` ... ``fold<k-1>`` and ``training`` (all entries), each a list of
    ``{"image": "images/<name>.nii.gz", "label": int, "patient": patient_id}`` with the image path relative
    to ``output_dir``, plus ``labels`` (index to class name), ``num_folds`` and ``seed``. All scans of a
    patient are in one fold; each class's patients are spread round-robin over the folds after a shuffle
    with ``seed``, so per fold each class's patient count is within one of the others'. The split depends
    only on the patient ids and ``seed``, not on the order the file system lists folders in.

    Args:
        root: the CC-CCII release folder (see :func:`find_scans`).
        output_dir: where ``images/`` and ``datalist.json`` go.
        num_folds: number of folds, at least 2 and at most the number of patients.
        seed: seed of the patient shuffle.
        spacing: voxel size written into each volume's affine (see :func:`convert_scan`).
        skip_existing: keep volumes that already exist (writes are atomic, so an existing file is complete);
            False converts every scan again, e.g. after changing ``spacing``.

    Returns:
        the path of ``datalist.json``.

    Raises:
        FileNotFoundError, ValueError: from :func:`find_scans` and :func:`convert_scan`; ValueError also for
            ``num_folds`` < 2 or larger than the number of patients, and for two scans with the same output name.
    """
    if isinstance(num_folds, bool) or not isinstance(num_folds, int) or num_folds < 2:
        raise ValueError(f"num_folds must be an integer of at least 2, got {num_folds!r}.")
    spacing = _check_spacing(spacing)
    root, output_dir = Path(root), Path(output_dir)
    scans = find_scans(root)
    patients = {(s.class_name, s.patient_id) for s in scans}
    if len(patients) < num_folds:
        raise ValueError(f"{root}: {len(patients)} patients cannot fill {num_folds} folds.")
    classes_of: dict[str, set[str]] = {}
    for class_name, patient in patients:
        classes_of.setdefault(patient, set()).add(class_name)
    shared = sorted((p for p, c in classes_of.items() if len(c) > 1), key=_natural_key)
    if shared:
        logger.warning(
            "%s: %d patient ids occur in more than one class folder (e.g. %s); they are split as different "
            "patients of each class.",
            root,
            len(shared),
            ", ".join(shared[:5]),
        )
    names: dict[str, Path] = {}
    for scan in scans:
        if scan.name in names:
            raise ValueError(f"{scan.folder} and {names[scan.name]} would both be written as {scan.name}.nii.gz.")
        names[scan.name] = scan.folder

    folds = _assign_folds(scans, num_folds, seed)
    entries: list[dict[str, Any]] = []
    fold_lists: list[list[dict[str, Any]]] = [[] for _ in range(num_folds)]
    converted = 0
    for index, scan in enumerate(scans, 1):
        relative = f"images/{scan.name}.nii.gz"
        target = output_dir / relative
        if not (skip_existing and target.is_file()):
            convert_scan(scan, target, spacing)
            converted += 1
        entry = {"image": relative, "label": scan.label, "patient": scan.patient_id}
        entries.append(entry)
        fold_lists[folds[(scan.class_name, scan.patient_id)]].append(entry)
        if index % 100 == 0 or index == len(scans):
            kept = index - converted
            logger.info("%d/%d scans done (%d converted, %d existing kept)", index, len(scans), converted, kept)

    datalist: dict[str, Any] = {
        "labels": {str(i): name for i, name in enumerate(CLASS_NAMES)},
        "num_folds": num_folds,
        "seed": seed,
        **{f"fold{i}": fold for i, fold in enumerate(fold_lists)},
        "training": entries,
    }
    path = output_dir / "datalist.json"
    text = json.dumps(datalist, indent=2) + "\n"
    atomic_write(path, lambda handle: handle.write(text.encode("utf-8")))
    return path


def format_fold_table(datalist_path: str | Path) -> str:
    """A text table of scans and (in brackets) patients per class and fold, with totals."""
    _, folds = read_folds(datalist_path)
    header = ["class", *(f"fold{i}" for i in range(len(folds))), "total"]
    rows = [header]
    for label, class_name in [*enumerate(CLASS_NAMES), (None, "all")]:
        cells = [class_name]
        for entries in [*folds, [e for f in folds for e in f]]:
            picked = [e for e in entries if label is None or e.get("label") == label]
            patients = {(e.get("label"), e.get("patient")) for e in picked}
            cells.append(f"{len(picked)} ({len(patients)})")
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join([row[0].ljust(widths[0]), *(cell.rjust(w) for cell, w in zip(row[1:], widths[1:], strict=True))])
        for row in rows
    ]
    return "\n".join([*lines, "cells: scans (patients)"])


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: convert a CC-CCII release and print the per-class, per-fold counts."""
    parser = argparse.ArgumentParser(
        prog="python -m voco_components.apps.ccii",
        description="Convert CC-CCII slice folders to NIfTI volumes and a patient-wise, class-stratified "
        "k-fold datalist (<OUTPUT_DIR>/images/*.nii.gz, <OUTPUT_DIR>/datalist.json).",
    )
    parser.add_argument("root", help="folder holding NCP/, CP/ and Normal/")
    parser.add_argument("output_dir", help="where images/ and datalist.json are written")
    parser.add_argument("--num_folds", type=int, default=3, help="number of folds (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient shuffle (default 0)")
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        default=(1.0, 1.0, 1.0),
        metavar=("X", "Y", "Z"),
        help="voxel size in the affine (default 1 1 1; CC-CCII slices carry no spacing)",
    )
    parser.add_argument("--overwrite", action="store_true", help="convert scans whose volume already exists again")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        path = convert_dataset(
            args.root, args.output_dir, args.num_folds, args.seed, args.spacing, skip_existing=not args.overwrite
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    print(format_fold_table(path))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
