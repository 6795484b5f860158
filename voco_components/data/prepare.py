"""The ``prepare`` step: preprocess a datalist once into the prepared volume cache, in parallel parts, resumably."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.data.utils import affine_to_spacing
from tqdm import tqdm

from voco_components.data.dataset import volume_error_in
from voco_components.data.volume_cache import (
    MANIFEST_DIR,
    ManifestWriter,
    VolumeCache,
    entry_key,
    entry_text,
    part_of,
    quantise,
    source_stats,
    write_volume,
)

__all__ = ["unique_entries", "this_part", "foreground_box", "prepare_volume", "Preparer"]

_WORKER: dict[str, Any] = {}
PR_SET_PDEATHSIG = 1


def unique_entries(data: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The entries of ``data`` in order, each once (training and validation lists may share volumes)."""
    seen: set[str] = set()
    out = []
    for entry in data:
        text = entry_text(entry)
        if text not in seen:
            seen.add(text)
            out.append(dict(entry))
    return out


def this_part(part: int, num_parts: int) -> tuple[int, int]:
    """(part, number of parts) of this process: job-array part ``part`` of ``num_parts``, split further
    over the ``torchrun`` ranks (``RANK`` of ``WORLD_SIZE``) when launched under it."""
    if not 0 <= int(part) < int(num_parts):
        raise ValueError(f"prepare_part must lie in [0, prepare_num_parts = {num_parts}), got {part}.")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    return int(part) * world + rank, int(num_parts) * world


def foreground_box(image: Any) -> list[list[int]] | None:
    """``[[start, end), ...]`` per spatial axis of the foreground crop in the resampled grid, from the
    ``CropForeground`` record of a MetaTensor's applied operations (None when it has none)."""
    for op in getattr(image, "applied_operations", []):
        if str(op.get("class", "")).startswith("CropForeground"):
            cropped, size = op["extra_info"]["cropped"], op["orig_size"]
            return [[int(cropped[2 * a]), int(size[a]) - int(cropped[2 * a + 1])] for a in range(len(size))]
    return None


def _die_with_parent() -> None:
    """On Linux, have the kernel kill this worker when its parent dies (a killed ``prepare`` leaves no orphans)."""
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        except (OSError, AttributeError):
            pass


def _init_worker(cache: VolumeCache) -> None:
    """Worker start-up: the cache and its pipeline, built once."""
    _WORKER["cache"] = cache
    _WORKER["pipeline"] = cache.pipeline()


def _init_pool_worker(cache: VolumeCache) -> None:
    """:func:`_init_worker` in a pool process, with one thread, which dies with the parent."""
    _die_with_parent()
    torch.set_num_threads(1)
    _init_worker(cache)


def prepare_volume(entry: Mapping[str, Any]) -> dict[str, Any]:
    """Preprocess one entry into its volume file (worker side) and return its manifest record.

    A volume that cannot be prepared gives a ``failed`` record with its error instead of raising.
    """
    cache, pipeline = _WORKER["cache"], _WORKER["pipeline"]
    key = entry_key(entry)
    record: dict[str, Any] = {"entry": entry_text(entry), "key": key, "source": source_stats(entry)}
    try:
        image = pipeline(dict(entry))["image"]
        array = quantise(image.detach().cpu().numpy(), cache.dtype)
        header = {"source": str(entry["image"]), "affine": image.affine.tolist(), "key": key}
        target = cache.file_for(key)
        for stale in target.parent.glob(f".{target.name}.*.tmp"):  # left by a worker killed while writing
            stale.unlink(missing_ok=True)
        nbytes, checksum = write_volume(target, array, header, cache.clevel)
    except Exception as exc:
        error = volume_error_in(exc) or exc
        return {**record, "status": "failed", "error": f"{type(error).__name__}: {error}"}
    meta = image.meta
    original_affine = meta.get("original_affine")  # as read, before orientation (MONAI 1.5.2 and 1.6)
    return {
        **record,
        "status": "done",
        "file": str(target.relative_to(cache.folder)),
        "bytes": nbytes,
        "checksum": checksum,
        "shape": list(array.shape),
        "original_shape": [int(s) for s in meta.get("spatial_shape", [])],
        "original_spacing": _spacing(original_affine) if original_affine is not None else None,
        "foreground_box": foreground_box(image),
    }


def _spacing(affine: Any) -> list[float]:
    """Voxel size in mm from a (4, 4) affine (MONAI's ``affine_to_spacing``, zero columns kept as 0), rounded."""
    spacing = affine_to_spacing(np.asarray(affine, dtype=np.float64), r=3, dtype=np.float64, suppress_zeros=False)
    return [round(float(s), 6) for s in spacing]


class Preparer:
    """Preprocess every volume of ``data`` (this process's part of it) into ``cache``.

    Entries are assigned to parts by :func:`voco_components.data.volume_cache.part_of`. An entry is
    skipped when the manifest holds a ``done`` record whose source files have the same size and
    modification time and whose volume file exists; everything else (new, changed, failed before) is
    prepared again. Volume files are written atomically by the workers; the manifest line of a volume
    is appended (by this process only, to this part's own file) after its file is renamed into place.

    Args:
        cache: the :class:`VolumeCache` to fill.
        data: datalist entries (training and validation together; duplicates are prepared once).
        workers: worker processes on this machine (0: in this process).
        part: this job's part, 0 .. ``num_parts`` - 1 (job arrays); split further over torchrun ranks.
        num_parts: number of parts of the job array.
        progress: show a progress bar.
    """

    def __init__(
        self,
        cache: VolumeCache,
        data: Sequence[Mapping[str, Any]],
        workers: int = 1,
        part: int = 0,
        num_parts: int = 1,
        progress: bool = True,
    ) -> None:
        if int(workers) < 0:
            raise ValueError(f"prepare_workers must be non-negative, got {workers}.")
        self.cache = cache
        self.data = data
        self.workers = int(workers)
        self.part, self.num_parts = this_part(part, num_parts)
        self.progress = progress

    def entries(self) -> list[dict[str, Any]]:
        """This part's entries, each once."""
        return [e for e in unique_entries(self.data) if part_of(e, self.num_parts) == self.part]

    def is_current(self, entry: Mapping[str, Any], record: Mapping[str, Any] | None) -> bool:
        """Whether ``record`` is a ``done`` record of ``entry``'s current source files with its file present."""
        return (
            record is not None
            and record.get("status") == "done"
            and record.get("source") == source_stats(entry)
            and (self.cache.folder / record["file"]).is_file()
        )

    def _results(self, todo: list[dict[str, Any]]) -> Iterable[dict[str, Any]]:
        if self.workers == 0:
            _init_worker(self.cache)
            yield from map(prepare_volume, todo)
            return
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn")
        with context.Pool(self.workers, initializer=_init_pool_worker, initargs=(self.cache,)) as pool:
            yield from pool.imap_unordered(prepare_volume, todo)

    def run(self) -> dict[str, Any]:
        """Prepare this part; returns (and logs) the summary: done, skipped, failed (with errors), bytes, seconds."""
        start = time.perf_counter()
        self.cache.create()
        records = self.cache.records()
        entries = self.entries()
        todo = [e for e in entries if not self.is_current(e, records.get(entry_text(e)))]
        name = f"part-{self.part:05d}-of-{self.num_parts:05d}.jsonl"
        writer = ManifestWriter(self.cache.folder / MANIFEST_DIR / name)
        done, failed, nbytes = 0, {}, 0
        try:
            bar = tqdm(total=len(todo), desc=f"prepare {self.part + 1}/{self.num_parts}", disable=not self.progress)
            for record in self._results(todo):
                writer.append(record)
                if record["status"] == "done":
                    done += 1
                    nbytes += record["bytes"]
                else:
                    failed[record["source"][0][0] if record["source"] else record["entry"]] = record["error"]
                bar.update()
            bar.close()
        finally:
            writer.close()
        summary = {
            "cache": str(self.cache.folder),
            "part": f"{self.part + 1}/{self.num_parts}",
            "volumes": len(entries),
            "done": done,
            "skipped": len(entries) - len(todo),
            "failed": failed,
            "bytes": nbytes,
            "seconds": round(time.perf_counter() - start, 3),
        }
        print(format_summary(summary), flush=True)
        return summary


def format_summary(summary: Mapping[str, Any]) -> str:
    """The summary of :meth:`Preparer.run` as a few lines of text, the failed volumes named one per line."""
    lines = [
        f"prepare {summary['part']} into {summary['cache']}: {summary['volumes']} volumes, {summary['done']} done, "
        f"{summary['skipped']} skipped (already cached), {len(summary['failed'])} failed, "
        f"{summary['bytes'] / 1e6:.1f} MB written in {summary['seconds']:.1f} s"
    ]
    lines += [f"  failed: {name}: {error}" for name, error in summary["failed"].items()]
    return "\n".join(lines)
