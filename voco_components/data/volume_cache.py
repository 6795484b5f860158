"""The prepared volume cache: compact blosc2 volume files, a per-part JSON-lines manifest, reader and writer."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import stat
import time
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import blosc2
import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, MapTransform

from voco_components.transforms.pipelines import ct_preprocessing
from voco_components.utils import VolumeError, atomic_save_text, atomic_write

__all__ = [
    "FORMAT_VERSION",
    "CACHE_DTYPES",
    "CACHE_MODES",
    "CacheMismatchError",
    "entry_text",
    "entry_key",
    "part_of",
    "source_stat",
    "source_stats",
    "quantise",
    "dequantise",
    "write_volume",
    "read_volume",
    "VolumeCache",
    "ManifestWriter",
    "LoadCachedVolumed",
    "open_cache",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
"""Version of the volume-file layout and the manifest records; part of the cache folder's hash."""
CACHE_DTYPES = ("uint8", "float16")
CACHE_MODES = ("auto", "prepared", "lazy")
MAGIC = b"VOCOVOL1"
DEFAULT_CLEVEL = 1
"""zstd level of the volume files: level 1 is within 4 % of level 5's size and several times faster
(``benchmarks/bench_cache.py``, codec table)."""
UINT8_SCALE = 255.0
"""A uint8 voxel ``q`` stands for the windowed value ``q / 255`` (error at most 1/510)."""
FOLDER_PREFIX = "voco-"
SETTINGS_FILE = "settings.json"
MANIFEST_DIR = "manifest"


class CacheMismatchError(ValueError):
    """A prepared cache exists but was made with other preprocessing settings; the message names it."""


# ----------------------------------------------------------------------------------------------- entries


def entry_text(entry: Mapping[str, Any]) -> str:
    """Canonical JSON of a datalist entry (sorted keys, no spaces): its identity in the manifest."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), default=str)


def entry_key(entry: Mapping[str, Any]) -> str:
    """sha1 hex of :func:`entry_text`: names the entry's volume file and assigns it to a part."""
    return hashlib.sha1(entry_text(entry).encode()).hexdigest()


def part_of(entry: Mapping[str, Any], num_parts: int) -> int:
    """The part (0 .. num_parts - 1) that prepares ``entry``: stable, whatever else is in the datalist."""
    return int(entry_key(entry)[:15], 16) % int(num_parts)


def source_stat(path: str | Path) -> list[Any]:
    """``[path, size, stamp]`` of one source: a file's size and modification time (ns); a folder's (a DICOM
    series) total size of its files and the sha1 hex of every file's name, size and modification time, so that
    a slice replaced, added or removed changes it; ``[path, -1, -1]`` when it is missing."""
    try:
        info = os.stat(path)
        if not stat.S_ISDIR(info.st_mode):
            return [str(path), info.st_size, info.st_mtime_ns]
        files = sorted((f.name, f.stat()) for f in os.scandir(path) if f.is_file())
    except OSError:
        return [str(path), -1, -1]
    listing = json.dumps([[name, i.st_size, i.st_mtime_ns] for name, i in files])
    return [str(path), sum(i.st_size for _, i in files), hashlib.sha1(listing.encode()).hexdigest()]


def source_stats(entry: Mapping[str, Any], keys: Sequence[str] = ("image",)) -> list[list[Any]]:
    """:func:`source_stat` of every source file or series folder of ``entry`` under ``keys``."""
    stats = []
    for key in keys:
        paths = entry.get(key, [])
        stats += [source_stat(path) for path in ([paths] if isinstance(paths, (str, Path)) else paths)]
    return stats


# ------------------------------------------------------------------------------------------ volume files


def quantise(image: np.ndarray, dtype: str) -> np.ndarray:
    """Windowed values in [0, 1] -> ``uint8`` (``round(x * 255)``, clipped) or ``float16``; same shape."""
    if dtype == "uint8":
        return np.clip(np.rint(np.asarray(image, dtype=np.float32) * UINT8_SCALE), 0, 255).astype(np.uint8)
    if dtype == "float16":
        return np.asarray(image).astype(np.float16)
    raise ValueError(f"cache dtype must be one of {CACHE_DTYPES}, got {dtype!r}.")


def dequantise(array: np.ndarray | torch.Tensor) -> torch.Tensor:
    """The float32 values a cached array stands for: ``uint8 / 255``, ``float16`` widened; same shape."""
    tensor = torch.as_tensor(array)
    return tensor.float().div_(UINT8_SCALE) if tensor.dtype == torch.uint8 else tensor.float()


def encode_volume(array: np.ndarray, header: Mapping[str, Any], clevel: int = DEFAULT_CLEVEL) -> bytes:
    """One volume file: ``MAGIC``, a 4-byte little-endian header length, the JSON header, the blosc2 payload.

    The payload is ``blosc2.compress2`` of the C-order array bytes (zstd at ``clevel``, no filter for
    uint8, byte shuffle for float16); the header holds ``dtype`` and ``shape`` next to ``header``.
    """
    array = np.ascontiguousarray(array)
    filters = [blosc2.Filter.NOFILTER if array.itemsize == 1 else blosc2.Filter.SHUFFLE]
    payload = blosc2.compress2(
        array.tobytes(), codec=blosc2.Codec.ZSTD, clevel=clevel, filters=filters, typesize=array.itemsize, nthreads=1
    )
    meta = json.dumps({**header, "dtype": array.dtype.name, "shape": list(array.shape)}).encode()
    return MAGIC + len(meta).to_bytes(4, "little") + meta + payload


def write_volume(
    path: str | Path, array: np.ndarray, header: Mapping[str, Any], clevel: int = DEFAULT_CLEVEL
) -> tuple[int, str]:
    """Write one volume file atomically (temp file in the same folder + rename); returns (bytes, sha1 hex)."""
    blob = encode_volume(array, header, clevel)
    atomic_write(path, lambda handle: handle.write(blob), "wb")
    return len(blob), hashlib.sha1(blob).hexdigest()


def read_volume(path: str | Path, checksum: str | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a volume file -> (array of its stored dtype and shape, header); checks ``checksum`` when given.

    Raises:
        VolumeError: the file is missing, truncated, not a volume file, or its checksum differs.
    """
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise VolumeError(f"{path}: cached volume cannot be read ({exc.strerror or exc}).") from exc
    if checksum is not None and hashlib.sha1(blob).hexdigest() != checksum:
        raise VolumeError(f"{path}: cached volume does not match its manifest checksum (corrupt file); prepare again.")
    if blob[: len(MAGIC)] != MAGIC or len(blob) < len(MAGIC) + 4:
        raise VolumeError(f"{path}: not a VoCo cached volume (bad magic).")
    size = int.from_bytes(blob[len(MAGIC) : len(MAGIC) + 4], "little")
    start = len(MAGIC) + 4
    try:
        header = json.loads(blob[start : start + size])
        raw = blosc2.decompress2(blob[start + size :])
        array = np.frombuffer(raw, dtype=header["dtype"]).reshape(header["shape"])
    except Exception as exc:
        raise VolumeError(f"{path}: cached volume is damaged ({type(exc).__name__}: {exc}).") from exc
    return array, header


# ------------------------------------------------------------------------------------------------- cache


def _canonical(value: Any) -> Any:
    """Settings as plain JSON values (tuples -> lists, numbers as float where a float was given)."""
    if isinstance(value, Mapping):
        return {str(k): _canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


class VolumeCache:
    """The prepared cache of one preprocessing setting: ``<root>/voco-<hash12>/``.

    The folder holds ``settings.json`` (format version, pipeline, its arguments, dtype), the volume
    files in a fan-out ``<key[:2]>/<key>.vol`` (``key`` = :func:`entry_key`) and ``manifest/``, one
    append-only JSON-lines file per part (see :class:`ManifestWriter`). ``hash12`` is the sha1 of the
    canonical settings, so other settings never read this cache.

    Args:
        root: the folder that holds the caches (the bundle's ``cache_dir``).
        preprocessing: keyword arguments of :func:`voco_components.transforms.pipelines.ct_preprocessing`.
        dtype: ``uint8`` (default, ``round(x * 255)``) or ``float16``.
        clevel: zstd level of new volume files (does not change the cache's identity).
    """

    def __init__(
        self, root: str | Path, preprocessing: Mapping[str, Any], dtype: str = "uint8", clevel: int = DEFAULT_CLEVEL
    ) -> None:
        if dtype not in CACHE_DTYPES:
            raise ValueError(f"cache dtype must be one of {CACHE_DTYPES}, got {dtype!r}.")
        self.root = Path(root)
        self.settings = {
            "format": FORMAT_VERSION,
            "pipeline": "voco_components.transforms.pipelines.ct_preprocessing",
            "preprocessing": _canonical(dict(preprocessing)),
            "dtype": dtype,
        }
        digest = hashlib.sha1(json.dumps(_as_floats(self.settings), sort_keys=True).encode()).hexdigest()
        self.folder = self.root / f"{FOLDER_PREFIX}{digest[:12]}"
        self.dtype = dtype
        self.clevel = int(clevel)

    def __repr__(self) -> str:
        return f"VolumeCache({str(self.folder)!r})"

    def pipeline(self) -> Compose:
        """The deterministic preprocessing this cache stores (keeps metadata, for the manifest record)."""
        return ct_preprocessing(image_key="image", keep_meta=True, **self.settings["preprocessing"])

    def file_for(self, key: str) -> Path:
        """Path of the volume file of entry key ``key``."""
        return self.folder / key[:2] / f"{key}.vol"

    def exists(self) -> bool:
        """Whether ``prepare`` has created this cache (its ``settings.json`` is there)."""
        return (self.folder / SETTINGS_FILE).is_file()

    def check_settings(self) -> None:
        """Refuse a cache folder whose ``settings.json`` differs from these settings (names the folder)."""
        path = self.folder / SETTINGS_FILE
        stored = json.loads(path.read_text())
        if _as_floats(stored) != _as_floats(self.settings):
            raise CacheMismatchError(
                f"{self.folder}: prepared cache made with other settings ({_difference(stored, self.settings)}); "
                "run prepare for the current settings or point cache_dir elsewhere."
            )

    def create(self) -> None:
        """Create the folder and its ``settings.json`` (atomically), or check the existing one."""
        if self.exists():
            self.check_settings()
            return
        atomic_save_text(json.dumps(self.settings, indent=2, sort_keys=True) + "\n", self.folder / SETTINGS_FILE)

    def others(self) -> list[Path]:
        """Other prepared caches under ``root`` (folders ``voco-*`` with a ``settings.json``)."""
        if not self.root.is_dir():
            return []
        return sorted(p.parent for p in self.root.glob(f"{FOLDER_PREFIX}*/{SETTINGS_FILE}") if p.parent != self.folder)

    def records(self) -> dict[str, dict[str, Any]]:
        """The merged manifest, read now: :func:`entry_text` -> its latest record over all part files.

        Records are ordered by their ``time`` (then file and line order); a torn last line of a part
        file (a writer killed mid-line) is ignored.
        """
        return load_manifest(self.folder / MANIFEST_DIR)


def _as_floats(value: Any) -> Any:
    """``value`` with every number as a float, so that ``250`` and ``250.0`` name the same settings."""
    if isinstance(value, Mapping):
        return {k: _as_floats(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_as_floats(v) for v in value]
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _difference(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> str:
    """``name: cached -> wanted`` for the settings that differ (one level into ``preprocessing``)."""
    flat_stored = {**stored, **{f"preprocessing.{k}": v for k, v in stored.get("preprocessing", {}).items()}}
    flat_wanted = {**wanted, **{f"preprocessing.{k}": v for k, v in wanted.get("preprocessing", {}).items()}}
    keys = sorted(k for k in set(flat_stored) | set(flat_wanted) if k != "preprocessing")
    diffs = [
        f"{k}: {flat_stored.get(k)!r} -> {flat_wanted.get(k)!r}"
        for k in keys
        if _as_floats(flat_stored.get(k)) != _as_floats(flat_wanted.get(k))
    ]
    return "; ".join(diffs) or "settings.json differs"


def load_manifest(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Merge the ``*.jsonl`` part files of ``folder``: entry text -> latest record (see :meth:`VolumeCache.records`)."""
    folder = Path(folder)
    rows: list[tuple[float, int, dict[str, Any]]] = []
    order = 0
    for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
        lines = path.read_bytes().split(b"\n")
        for number, line in enumerate(lines):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines) - 1:  # torn last line of a killed writer
                    continue
                raise ValueError(f"{path}: line {number + 1} is not valid JSON (a damaged manifest).") from None
            rows.append((float(record.get("time", 0.0)), order, record))
            order += 1
    rows.sort(key=lambda row: (row[0], row[1]))
    return {record["entry"]: record for _, _, record in rows}


class ManifestWriter:
    """The only writer of one part's manifest file: append a JSON line per volume, flushed and fsynced.

    Opening truncates a torn last line left by a killed writer, so that appended lines stay whole.
    Every part (``prepare_part`` of ``prepare_num_parts``, or a torchrun rank) has its own file, so
    concurrent parts never write the same file.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._truncate_torn_line()
        self.handle: IO[str] = open(self.path, "a", encoding="utf-8")

    def _truncate_torn_line(self) -> None:
        if not self.path.is_file():
            return
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            with open(self.path, "r+b") as handle:
                handle.truncate(data.rfind(b"\n") + 1)

    def append(self, record: Mapping[str, Any]) -> None:
        """Append one record as a line, flushed to disk before returning."""
        self.handle.write(json.dumps({**record, "time": time.time()}, separators=(",", ":")) + "\n")
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def close(self) -> None:
        self.handle.close()


# ---------------------------------------------------------------------------------------------- reading


class LoadCachedVolumed(MapTransform):
    """Load cached volume files into ``MetaTensor`` (C, *spatial) of the stored dtype, with their affine.

    ``data[key]`` is the volume file's path; ``data[key + '_checksum']``, when present, is checked
    against the file's sha1. The uint8 voxels stay uint8 (``q / 255`` is the windowed value, see
    :func:`dequantise`); ``meta['filename_or_obj']`` is the source CT, so that errors name it.

    Raises:
        VolumeError: naming the cache file and its source, for a missing, damaged or mismatched file.
    """

    def __init__(self, keys: KeysCollection = "image", verify: bool = True, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        self.verify = verify

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            checksum = d.pop(f"{key}_checksum", None) if self.verify else None
            array, header = read_volume(d[key], checksum)
            affine = torch.as_tensor(header.get("affine", np.eye(4).tolist()), dtype=torch.float64)
            meta = {"filename_or_obj": header.get("source", str(d[key])), "cache_file": str(d[key])}
            d[key] = MetaTensor(torch.from_numpy(array.copy()), affine=affine, meta=meta)
        return d


def open_cache(
    root: str | Path | None, preprocessing: Mapping[str, Any], dtype: str = "uint8", mode: str = "auto"
) -> VolumeCache | None:
    """The prepared cache the training streams read, or None for lazy preprocessing.

    ``mode``: ``prepared`` requires the cache; ``lazy`` never uses it (``PersistentDataset`` files in
    ``root``); ``auto`` uses it when ``prepare`` has made it and otherwise falls back to lazy
    preprocessing, unless ``root`` holds prepared caches of other settings (then it refuses, naming them,
    rather than silently training at the lazy speed on settings no cache was prepared for).

    Raises:
        CacheMismatchError: see above, or the cache folder's ``settings.json`` differs.
        FileNotFoundError: ``prepared`` mode and no cache.
    """
    if mode not in CACHE_MODES:
        raise ValueError(f"cache_mode must be one of {CACHE_MODES}, got {mode!r}.")
    if mode == "lazy" or root is None:
        return None
    cache = VolumeCache(root, preprocessing, dtype)
    if cache.exists():
        cache.check_settings()
        return cache
    if mode == "prepared":
        raise FileNotFoundError(f"{cache.folder}: no prepared cache for these settings; run the bundle's prepare id.")
    others = cache.others()
    if others:
        details = "; ".join(
            f"{p}: {_difference(json.loads((p / SETTINGS_FILE).read_text()), cache.settings)}" for p in others
        )
        raise CacheMismatchError(
            f"{cache.root} holds prepared caches of other settings ({details}); run prepare for the current "
            f"settings (expected {cache.folder}) or set cache_mode to 'lazy'."
        )
    logger.info(f"no prepared cache at {cache.folder}: preprocessing lazily (run the prepare id to make one).")
    return None
