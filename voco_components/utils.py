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
    "is_main_process",
    "atomic_write",
    "atomic_save",
    "atomic_save_text",
    "unwrap_ddp",
    "VOLUME_SUFFIXES",
    "VolumeError",
    "volume_name",
    "volume_stem",
]


VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd")
"""File endings of the volumes a folder or glob pattern datalist takes: NIfTI, NRRD and MetaImage."""


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
