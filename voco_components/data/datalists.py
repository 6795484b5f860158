"""Datalists: decathlon-style JSON files, folders or glob patterns of volumes and DICOM series folders, merged and
resolved to absolute paths."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from voco_components.transforms.dicom import is_dicom_folder
from voco_components.utils import VOLUME_SUFFIXES

__all__ = [
    "volume_files",
    "read_json",
    "load_datalists",
]


def _is_volume(path: Path) -> bool:
    return path.is_file() and path.name.lower().endswith(VOLUME_SUFFIXES)


def _is_volume_or_series(path: Path) -> bool:
    return _is_volume(path) or is_dicom_folder(path)


def volume_files(source: str | Path) -> list[str] | None:
    """The volumes a folder or a glob pattern names, as sorted absolute paths; None for any other ``source``.

    A volume is a NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``) or MetaImage (``.mha``, ``.mhd``) file, or a
    DICOM series folder (a folder with DICOM files in it, read as one volume by
    :class:`voco_components.transforms.LoadVolumed`). A series folder gives itself; any other folder every volume
    file and every series folder directly in it (a folder of series folders gives one volume per series); a glob
    pattern (``*``, ``?``, ``[...]``; ``**`` spans folders) the volume files and series folders it matches; a path
    to one volume file, that file. Anything else (a JSON datalist) gives None.

    Raises:
        ValueError: a folder or pattern that holds no volume, or a series folder that also holds volume files;
            the message names it.
    """
    path = Path(source)
    kinds = f"volume files ({', '.join(VOLUME_SUFFIXES)}) or DICOM series folders"
    if is_dicom_folder(path):
        others = sorted(p.name for p in path.iterdir() if _is_volume(p))
        if others:
            raise ValueError(
                f"{path}: holds DICOM files and volume files ({', '.join(others[:5])}); a DICOM series needs a "
                "folder of its own."
            )
        found = [path]
    elif path.is_dir():
        found = [p for p in path.iterdir() if _is_volume_or_series(p)]
        where = f"{path}: no {kinds} in this folder."
    elif _is_volume(path):
        found = [path]
    elif not path.exists() and glob.has_magic(str(source)):
        found = [p for p in map(Path, glob.glob(str(source), recursive=True)) if _is_volume_or_series(p)]
        where = f"{source}: the pattern matches no {kinds}."
    else:
        return None
    if not found:
        raise ValueError(where)
    return sorted(os.path.abspath(p) for p in found)


def _resolve(entry: Any, base: Path) -> Any:
    """``entry`` under ``base`` unless absolute, normalised (``series/`` -> ``series``, so that outputs named after a
    series folder get its name)."""
    if isinstance(entry, str) and entry:
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
    a folder of volumes or of DICOM series folders, one series folder, a glob pattern or one volume file
    (:func:`volume_files`). A folder or pattern has no split into lists: it gives all its volumes, sorted by path,
    whichever ``key`` is asked for. An ``image`` of a JSON entry may name a DICOM series folder too.

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
