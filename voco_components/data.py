"""Reading VoCo data: decathlon-style datalists, the embedded demo CTs, and volume checks that name the file."""

from __future__ import annotations

import json
import math
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
    "VolumeError",
    "read_json",
    "load_datalists",
    "volume_name",
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


class VolumeError(ValueError):
    """A problem with one input volume; the message starts with the file's path."""


def volume_name(value: Any, fallback: str = "<in-memory volume>") -> str:
    """The source file of a loaded volume (MetaTensor metadata), or ``fallback``."""
    if isinstance(value, MetaTensor):
        name = value.meta.get("filename_or_obj")
        if name:
            return str(name)
    return fallback


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


def load_datalists(
    datalist: str | Path | Sequence[str | Path], dataset_dir: str | Path, key: str = "training"
) -> list[dict[str, Any]]:
    """Merge the ``key`` lists of one or several decathlon-style datalist JSON files.

    Args:
        datalist: one JSON path or a list of them (BTCV, TCIA-Covid19, LUNA16, ... in one run).
        dataset_dir: folder that relative paths in the entries resolve against.
        key: the list to read from each file, e.g. ``training`` or ``validation``.

    Returns:
        the entries of all files in order, as dicts (a bare path entry becomes ``{"image": path}``),
        with relative ``image``/``label`` paths made absolute under ``dataset_dir``.

    Raises:
        FileNotFoundError: a datalist file does not exist.
        ValueError: a file is not valid JSON, lacks ``key``, or ``key`` is not a list.
    """
    paths = [datalist] if isinstance(datalist, (str, Path)) else list(datalist)
    if not paths:
        raise ValueError("datalist is empty: give at least one datalist JSON file.")
    base = Path(dataset_dir)
    merged: list[dict[str, Any]] = []
    for path in map(Path, paths):
        content = read_json(path, "datalist")
        if not isinstance(content, dict) or key not in content:
            found = sorted(content) if isinstance(content, dict) else type(content).__name__
            raise ValueError(f"{path}: no '{key}' list in this datalist (found {found}).")
        entries = content[key]
        if not isinstance(entries, list):
            raise ValueError(f"{path}: '{key}' must be a list, got {type(entries).__name__}.")
        for entry in entries:
            item = {"image": entry} if isinstance(entry, str) else dict(entry)
            if "image" not in item:
                raise ValueError(f"{path}: an entry of '{key}' has no 'image': {entry!r}.")
            merged.append({k: _resolve(v, base) if k in ("image", "label") else v for k, v in item.items()})
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
