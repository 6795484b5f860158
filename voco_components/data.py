"""Reading VoCo data: datalists (decathlon-style JSON files, folders or glob patterns of volumes), the embedded
demo CTs, and volume checks that name the file."""

from __future__ import annotations

import glob
import json
import math
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import LoadImaged, MapTransform

__all__ = [
    "DEMO_DIR",
    "DEMO_DATALIST",
    "DEMO_ORGANS_DATALIST",
    "VOLUME_SUFFIXES",
    "VolumeError",
    "read_json",
    "volume_files",
    "load_datalists",
    "volume_name",
    "volume_stem",
    "LoadVolumed",
    "CheckVolumed",
    "AboveThreshold",
]

DEMO_DIR = Path(__file__).resolve().parent / "demo_data"
"""Five real CTs (pyradiomics and TotalSegmentator test data), int16 HU, two with organ maps; see its README.md."""
DEMO_DATALIST = DEMO_DIR / "datalist.json"
"""Pretraining: four CTs train, the chest CT ``lung2`` is held out."""
DEMO_ORGANS_DATALIST = DEMO_DIR / "organs_datalist.json"
"""Two CTs with BTCV organ ids (TotalSegmentator's predictions): ``abdomen`` trains, ``upper_abdomen`` is held out."""
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
"""File endings of the volumes a folder or glob pattern datalist takes: NIfTI, NRRD and MetaImage."""


class VolumeError(ValueError):
    """A problem with one input volume; the message starts with the file's path."""


def volume_name(value: Any, fallback: str = "<in-memory volume>") -> str:
    """The source file of a loaded volume (MetaTensor metadata), or ``fallback``."""
    if isinstance(value, MetaTensor):
        name = value.meta.get("filename_or_obj")
        if name:
            return str(name)
    return fallback


def volume_stem(path: str | Path) -> str:
    """The file name of a volume without its image ending, for naming outputs after inputs:
    ``/data/case_01.nii.gz`` -> ``case_01``, ``1.3.6.1.4.1.mhd`` -> ``1.3.6.1.4.1``, ``scan.dcm`` -> ``scan``."""
    name = Path(path).name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _is_volume(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)


def volume_files(source: str | Path) -> list[str] | None:
    """The volumes a folder or a glob pattern names, as sorted absolute paths; None for any other ``source``.

    A folder gives every NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``) and MetaImage (``.mha``, ``.mhd``)
    file directly in it; a glob pattern (``*``, ``?``, ``[...]``; ``**`` spans folders) the volume files it
    matches; a path to one volume file, that file. Anything else (a JSON datalist) gives None.

    Raises:
        ValueError: a folder or pattern that holds no volume file; the message names it.
    """
    path = Path(source)
    if path.is_dir():
        found = [p for p in path.iterdir() if _is_volume(p)]
        where = f"{path}: no volume files ({', '.join(VOLUME_SUFFIXES)}) in this folder."
    elif _is_volume(path):
        found = [path]
    elif not path.exists() and glob.has_magic(str(source)):
        found = [p for p in map(Path, glob.glob(str(source), recursive=True)) if _is_volume(p)]
        where = f"{source}: the pattern matches no volume files ({', '.join(VOLUME_SUFFIXES)})."
    else:
        return None
    if not found:
        raise ValueError(where)
    return sorted(os.path.abspath(p) for p in found)


def _resolve(entry: Any, base: Path) -> Any:
    if isinstance(entry, str) and entry and not Path(entry).is_absolute():
        return str(base / entry)
    if isinstance(entry, list):
        return [_resolve(e, base) for e in entry]
    return entry


def read_json(path: str | Path, what: str = "JSON") -> Any:
    """Parse a JSON file; ``FileNotFoundError`` / ``ValueError`` name the file and say what it should be."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} file not found.")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}).") from exc


def _json_entries(path: Path, base: Path, key: str) -> list[dict[str, Any]]:
    """The ``key`` list of one decathlon-style datalist JSON file, relative ``image``/``label`` paths under ``base``."""
    content = read_json(path, "datalist (a JSON file, a folder of volumes or a glob pattern)")
    if not isinstance(content, dict) or key not in content:
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"{path}: no '{key}' list in this datalist (found {found}).")
    entries = content[key]
    if not isinstance(entries, list):
        raise ValueError(f"{path}: '{key}' must be a list, got {type(entries).__name__}.")
    merged = []
    for entry in entries:
        item = {"image": entry} if isinstance(entry, str) else dict(entry)
        if "image" not in item:
            raise ValueError(f"{path}: an entry of '{key}' has no 'image': {entry!r}.")
        merged.append({k: _resolve(v, base) if k in ("image", "label") else v for k, v in item.items()})
    return merged


def load_datalists(
    datalist: str | Path | Sequence[str | Path], dataset_dir: str | Path, key: str = "training"
) -> list[dict[str, Any]]:
    """The entries of one or several datalists, merged in order.

    Each datalist is a decathlon-style JSON file, whose ``key`` list is read, or images without a datalist:
    a folder of volumes, a glob pattern or one volume file (:func:`volume_files`). A folder or pattern has no
    split into lists: it gives all its volumes, sorted by path, whichever ``key`` is asked for.

    Args:
        datalist: one datalist or a list of them (BTCV, TCIA-Covid19, LUNA16, ... in one run).
        dataset_dir: folder that relative paths in JSON entries resolve against.
        key: the list to read from each JSON file, e.g. ``training``, ``validation`` or ``testing``.

    Returns:
        dicts (a bare path entry becomes ``{"image": path}``) with absolute ``image``/``label`` paths.

    Raises:
        FileNotFoundError: a datalist does not exist.
        ValueError: a file is not valid JSON, lacks ``key``, or ``key`` is not a list; a folder or pattern
            holds no volume.
    """
    sources = [datalist] if isinstance(datalist, (str, Path)) else list(datalist)
    if not sources:
        raise ValueError("datalist is empty: give at least one datalist JSON file, folder or glob pattern.")
    merged: list[dict[str, Any]] = []
    for source in sources:
        volumes = volume_files(source)
        if volumes is None:
            merged.extend(_json_entries(Path(source), Path(dataset_dir), key))
        else:
            merged.extend({"image": volume} for volume in volumes)
    return merged


class LoadVolumed(LoadImaged):
    """``LoadImaged`` whose failures (missing, truncated or unreadable files) raise :class:`VolumeError`
    naming the file, instead of an anonymous reader error."""

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        for key in self.key_iterator(dict(data)):
            path = data[key]
            if isinstance(path, (str, Path)) and not Path(path).exists():
                raise VolumeError(f"{path}: file not found.")
        try:
            return super().__call__(data, reader)
        except Exception as exc:
            names = ", ".join(str(data[k]) for k in self.key_iterator(dict(data)))
            raise VolumeError(f"{names}: cannot be read ({type(exc).__name__}: {exc}).") from exc


class CheckVolumed(MapTransform):
    """Reject volumes that would train on garbage, naming the file.

    Checks that each image is channel-first 3D (C, X, Y, Z), optionally that every voxel is finite,
    and that each spatial size is at least ``min_size`` (use it after foreground cropping to catch
    volumes with almost no foreground).

    Args:
        keys: images to check.
        min_size: smallest allowed spatial size per axis, or None for no check.
        allow_non_finite: accept NaN and inf voxels.
    """

    def __init__(
        self,
        keys: KeysCollection,
        min_size: Sequence[int] | None = None,
        allow_non_finite: bool = False,
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.min_size = None if min_size is None else tuple(int(s) for s in min_size)
        self.allow_non_finite = allow_non_finite

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            name = volume_name(image, fallback=f"'{key}'")
            shape = tuple(image.shape)
            if len(shape) != 4:
                raise VolumeError(f"{name}: expected a 3D volume with a channel axis (C, X, Y, Z), got shape {shape}.")
            if not self.allow_non_finite:
                tensor = torch.as_tensor(image)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise VolumeError(f"{name}: {bad} voxels are NaN or infinite.")
            if self.min_size is not None and any(s < m for s, m in zip(shape[1:], self.min_size, strict=True)):
                raise VolumeError(
                    f"{name}: spatial size {shape[1:]} is smaller than the minimum {self.min_size} "
                    "(after foreground cropping: too little foreground for a VoCo region)."
                )
        return d


class AboveThreshold:
    """Picklable ``select_fn`` for ``CropForegroundd``: voxels strictly above ``threshold`` are foreground."""

    def __init__(self, threshold: float = 0.0) -> None:
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}.")
        self.threshold = threshold

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image > self.threshold
