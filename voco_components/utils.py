"""What every layer of the library may use: atomic file writes, the main-process check, DDP unwrapping, and
the error type and names of input volumes."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from monai.data import MetaTensor

__all__ = [
    "TRUE_WORDS",
    "FALSE_WORDS",
    "NULL_WORDS",
    "as_bool",
    "as_optional",
    "is_main_process",
    "atomic_write",
    "atomic_save",
    "atomic_save_text",
    "unwrap_ddp",
    "VOLUME_SUFFIXES",
    "RADIOGRAPH_SUFFIXES",
    "VolumeError",
    "volume_name",
    "volume_stem",
]


VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
"""File endings of the volumes a folder or glob pattern datalist takes: NIfTI, NRRD and MetaImage."""


RADIOGRAPH_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".dicom")
"""File endings of the radiographs (2D images) a folder or glob pattern datalist of the 2D bundles takes."""


TRUE_WORDS = ("true", "True", "TRUE", "1")
FALSE_WORDS = ("false", "False", "FALSE", "0")
NULL_WORDS = ("null", "None", "none", "NULL")
"""How a bundle command line spells a boolean or a missing value. ``python -m monai.bundle run --amp false``
hands the override over as the string ``'false'`` (Python's ``False`` and ``None`` arrive as such): these
words are read as the user means them, in every bundle, by :func:`as_bool` and :func:`as_optional`."""


def as_bool(value: Any, name: str) -> bool:
    """A boolean config id as the user meant it: ``True``/``False``, 1/0, or one of :data:`TRUE_WORDS` /
    :data:`FALSE_WORDS`; anything else (``'maybe'``, 2, None) raises a ValueError naming the id."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip() in TRUE_WORDS + FALSE_WORDS:
        return value.strip() in TRUE_WORDS
    raise ValueError(
        f"`{name}` must be true or false (true/false/True/False/1/0), got {value!r}; "
        f"for example --{name} false on the bundle command line."
    )


def as_optional(value: Any) -> Any:
    """A config id that may be missing: None or one of :data:`NULL_WORDS` (as the bundle command line hands
    over ``--pretrained null``) gives None; any other value is returned unchanged."""
    if value is None or (isinstance(value, str) and value.strip() in NULL_WORDS):
        return None
    return value


def is_main_process() -> bool:
    """True outside distributed runs and on rank 0."""
    return not (torch.distributed.is_available() and torch.distributed.is_initialized()) or (
        torch.distributed.get_rank() == 0
    )


def atomic_write(path: str | Path, write: Callable[[IO], None], mode: str = "wb") -> None:
    """Write through ``write`` to a temporary file in ``path``'s folder, flush it to disk, rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temporary file in the same folder, flushed to disk, then renamed over ``path``.

    A process killed at any moment leaves either the old file or the new one, never a partial file.
    """
    atomic_write(path, lambda handle: torch.save(obj, handle), "wb")


def atomic_save_text(text: str, path: str | Path) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, like :func:`atomic_save`."""
    atomic_write(path, lambda handle: handle.write(text), "w")


def unwrap_ddp(obj: Any) -> Any:
    """The module inside a ``DistributedDataParallel`` wrapper, or ``obj`` itself."""
    return obj.module if isinstance(obj, torch.nn.parallel.DistributedDataParallel) else obj


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
    ``/data/case_01.nii.gz`` -> ``case_01``, ``1.3.6.1.4.1.mhd`` -> ``1.3.6.1.4.1``, ``scan.dcm`` -> ``scan``; a
    folder (a DICOM series) keeps its whole name: ``/data/1.2.840.113619.2.55/`` -> ``1.2.840.113619.2.55``."""
    name = Path(path).name
    if Path(path).is_dir():
        return name
    for suffix in VOLUME_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem
