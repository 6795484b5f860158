"""Datalists: decathlon-style JSON files, folders or glob patterns of volumes and DICOM series folders, merged and
resolved to absolute paths."""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from voco_components.transforms.dicom import is_dicom_folder
from voco_components.utils import VOLUME_SUFFIXES, volume_stem

__all__ = [
    "volume_files",
    "read_json",
    "load_datalists",
    "listed_entries",
    "output_root",
    "output_name",
    "check_unique_outputs",
]


def _is_volume(path: Path, suffixes: Sequence[str] = VOLUME_SUFFIXES) -> bool:
    return path.is_file() and path.name.lower().endswith(tuple(suffixes))


def _is_volume_or_series(path: Path, suffixes: Sequence[str]) -> bool:
    return _is_volume(path, suffixes) or (_series_allowed(suffixes) and is_dicom_folder(path))


def _series_allowed(suffixes: Sequence[str]) -> bool:
    """A folder of DICOM files is one series (one volume) unless single DICOM files are the images asked for
    (radiographs: ``.dcm`` among ``suffixes``)."""
    return not any(s.lower() in (".dcm", ".dicom") for s in suffixes)


def volume_files(source: str | Path, suffixes: Sequence[str] = VOLUME_SUFFIXES) -> list[str] | None:
    """The volumes a folder or a glob pattern names, as sorted absolute paths; None for any other ``source``.

    A volume is a NIfTI (``.nii``, ``.nii.gz``), NRRD (``.nrrd``) or MetaImage (``.mha``, ``.mhd``) file, or a
    DICOM series folder (a folder with DICOM files in it, read as one volume by
    :class:`voco_components.transforms.LoadVolumed`). A series folder gives itself; any other folder every volume
    file and every series folder directly in it (a folder of series folders gives one volume per series); a glob
    pattern (``*``, ``?``, ``[...]``; ``**`` spans folders) the volume files and series folders it matches; a path
    to one volume file, that file. Anything else (a JSON datalist) gives None. ``suffixes`` names other file
    endings, e.g. :data:`voco_components.utils.RADIOGRAPH_SUFFIXES` for 2D images; where they include ``.dcm``,
    each DICOM file is an image and no folder is read as a series.

    Raises:
        ValueError: a folder or pattern that holds no volume, or a series folder that also holds volume files;
            the message names it.
    """
    path = Path(source)
    kinds = f"volume files ({', '.join(suffixes)})" + (" or DICOM series folders" if _series_allowed(suffixes) else "")
    if _series_allowed(suffixes) and is_dicom_folder(path):
        others = sorted(p.name for p in path.iterdir() if _is_volume(p, suffixes))
        if others:
            raise ValueError(
                f"{path}: holds DICOM files and volume files ({', '.join(others[:5])}); a DICOM series needs a "
                "folder of its own."
            )
        found = [path]
    elif path.is_dir():
        found = [p for p in path.iterdir() if _is_volume_or_series(p, suffixes)]
        where = f"{path}: no {kinds} in this folder."
    elif _is_volume(path, suffixes):
        found = [path]
    elif not path.exists() and glob.has_magic(str(source)):
        found = [p for p in map(Path, glob.glob(str(source), recursive=True)) if _is_volume_or_series(p, suffixes)]
        where = f"{source}: the pattern matches no {kinds}."
    else:
        return None
    if not found:
        raise ValueError(where)
    return sorted(os.path.abspath(p) for p in found)


def _resolve(entry: Any, bases: Sequence[Path]) -> Any:
    """``entry`` unless relative; a relative path under the first of ``bases`` that holds it, or under the first
    when none does (the error that follows then names the path the user asked for). Normalised: ``series/`` ->
    ``series``, so that outputs named after a series folder get its name."""
    if isinstance(entry, str) and entry:
        candidates = [base / entry for base in bases]
        if len(bases) == 1 or Path(entry).is_absolute():  # one place to look: no file system query
            return str(candidates[0])
        return str(next((c for c in candidates if c.exists()), candidates[0]))
    if isinstance(entry, list):
        return [_resolve(e, bases) for e in entry]
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


def listed_entries(path: str | Path, key: str) -> list[dict[str, Any]]:
    """The ``key`` list of one decathlon-style datalist JSON file, each entry a dict with an ``image`` (a bare
    string entry becomes ``{"image": entry}``), its paths as written; a ValueError naming the file otherwise."""
    path = Path(path)
    content = read_json(path, "datalist (a JSON file, a folder of volumes or a glob pattern)")
    if not isinstance(content, dict) or key not in content:
        found = sorted(content) if isinstance(content, dict) else type(content).__name__
        raise ValueError(f"{path}: no '{key}' list in this datalist (found {found}).")
    entries = content[key]
    if not isinstance(entries, list):
        raise ValueError(f"{path}: '{key}' must be a list, got {type(entries).__name__}.")
    listed = []
    for entry in entries:
        item = {"image": entry} if isinstance(entry, str) else dict(entry)
        if "image" not in item:
            raise ValueError(f"{path}: an entry of '{key}' has no 'image': {entry!r}.")
        listed.append(item)
    return listed


def _json_entries(path: Path, base: Path, key: str) -> list[dict[str, Any]]:
    """:func:`listed_entries` with relative ``image``/``label`` paths resolved under ``base`` or, where ``base``
    does not hold them, beside the JSON file."""
    bases = [base] if base.resolve() == path.parent.resolve() else [base, path.parent]
    return [
        {k: _resolve(v, bases) if k in ("image", "label") else v for k, v in item.items()}
        for item in listed_entries(path, key)
    ]


def load_datalists(
    datalist: str | Path | Sequence[str | Path],
    dataset_dir: str | Path,
    key: str = "training",
    suffixes: Sequence[str] = VOLUME_SUFFIXES,
) -> list[dict[str, Any]]:
    """The entries of one or several datalists, merged in order.

    Each datalist is a decathlon-style JSON file, whose ``key`` list is read, or images without a datalist:
    a folder of volumes or of DICOM series folders, one series folder, a glob pattern or one volume file
    (:func:`volume_files`). A folder or pattern has no split into lists: it gives all its volumes, sorted by path,
    whichever ``key`` is asked for. An ``image`` of a JSON entry may name a DICOM series folder too.

    Args:
        datalist: one datalist or a list of them (BTCV, TCIA-Covid19, LUNA16, ... in one run).
        dataset_dir: folder that relative paths in JSON entries resolve against; a relative path that is not
            there resolves beside its JSON file instead (the demo's organ datalist keeps working when
            ``dataset_dir`` points at the user's data).
        key: the list to read from each JSON file, e.g. ``training``, ``validation`` or ``testing``.
        suffixes: the file endings a folder or pattern takes (:func:`volume_files`).

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
        volumes = volume_files(source, suffixes)
        if volumes is None:
            merged.extend(_json_entries(Path(source), Path(dataset_dir), key))
        else:
            merged.extend({"image": volume} for volume in volumes)
    return merged


def output_root(entries: Sequence[Mapping[str, Any]], key: str = "image") -> str:
    """The deepest folder that holds every input of ``entries[i][key]``: outputs keep the folder structure below
    it (MONAI's ``SaveImage(data_root_dir=...)``), so ``site_a/ct.nii.gz`` and ``site_b/ct.nii.gz`` write
    ``site_a/ct_seg.nii.gz`` and ``site_b/ct_seg.nii.gz``. An empty list gives ``""``."""
    folders = [os.path.dirname(os.path.abspath(str(entry[key]))) for entry in entries]
    return os.path.commonpath(folders) if folders else ""


def output_name(path: str | Path, root: str | Path) -> str:
    """The name of an input's outputs: its folder relative to ``root`` and its stem (:func:`volume_stem`),
    ``/data/site_a/ct.nii.gz`` under ``/data`` -> ``site_a/ct``."""
    folder = os.path.relpath(os.path.dirname(os.path.abspath(str(path))), str(root)) if root else "."
    return os.path.normpath(os.path.join(folder, volume_stem(path)))


def check_unique_outputs(entries: Sequence[Mapping[str, Any]], key: str = "image") -> list[Mapping[str, Any]]:
    """``entries`` unchanged when every input gets its own output name (:func:`output_name` under
    :func:`output_root`); otherwise a ValueError, before the first step, that lists the inputs whose outputs
    would overwrite each other (``ct.nii.gz`` and ``ct.nrrd`` in one folder, or one file listed twice)."""
    root = output_root(entries, key)
    by_name: dict[str, list[str]] = {}
    for entry in entries:
        by_name.setdefault(output_name(entry[key], root), []).append(str(entry[key]))
    clashes = {name: paths for name, paths in by_name.items() if len(paths) > 1}
    if clashes:
        listed = "; ".join(f"{name}: {', '.join(paths)}" for name, paths in sorted(clashes.items()))
        raise ValueError(
            f"these inputs would write outputs of the same name, and one would overwrite the other: {listed}. "
            "Rename or remove one of each, or run them separately."
        )
    return list(entries)
