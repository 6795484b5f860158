"""A step-indexed VoCo sample stream: exact resume, any number of workers, DDP ranks without overlap."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import Dataset, PersistentDataset
from monai.data.utils import pickle_hashing
from monai.transforms import Randomizable, apply_transform
from torch.utils.data import DistributedSampler

from voco_components.data.volume_cache import LoadCachedVolumed, VolumeCache, entry_text, source_stat
from voco_components.utils import VolumeError

__all__ = [
    "sample_seed",
    "volume_error_in",
    "hash_entry_and_files",
    "PreparedVolumes",
    "VoCoStepDataset",
    "ResumableDistributedSampler",
]

logger = logging.getLogger(__name__)
ON_BAD_VOLUME = ("raise", "skip")


def sample_seed(seed: int, index: int) -> int:
    """A 32-bit seed for sample ``index`` of a stream seeded with ``seed`` (independent across indices)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def hash_entry_and_files(item: Any) -> bytes:
    """Cache key of a datalist entry that also changes when one of its files changes.

    ``PersistentDataset`` keys its cache on the entry alone by default, so an image or label file that
    is replaced under the same path would keep being served from a stale cache. This adds the size
    and modification time of every existing file the entry names, and for a DICOM series folder those of
    every file in it (:func:`voco_components.data.volume_cache.source_stat`).
    """

    def stats(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [stats(v) for v in value]
        if isinstance(value, (str, Path)) and Path(value).exists():
            return source_stat(value)
        return value

    entry = {str(k): stats(v) for k, v in item.items()} if isinstance(item, dict) else stats(item)
    return pickle_hashing(entry)


def volume_error_in(exc: BaseException) -> VolumeError | None:
    """The :class:`VolumeError` in an exception chain (MONAI wraps transform errors in RuntimeError)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, VolumeError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class PreparedVolumes:
    """The volumes of a datalist, read from a prepared :class:`VolumeCache` through its manifest.

    Start-up touches no volume or source file: each entry is looked up in the merged manifest, and
    only its volume file name and checksum are kept. Item ``i`` is ``data[i]`` with the image loaded by
    :class:`LoadCachedVolumed` (uint8 or float16 ``MetaTensor`` (1, *spatial)).

    Attributes:
        missing: indices of entries without a ``done`` record (never prepared, or failed) -> reason.
    """

    def __init__(self, data: Sequence[dict[str, Any]], cache: VolumeCache) -> None:
        self.data = data
        self.folder = cache.folder
        records = cache.records()
        self.files: list[tuple[str, str] | None] = []
        self.missing: dict[int, str] = {}
        for index, entry in enumerate(data):
            record = records.get(entry_text(entry))
            if record is not None and record.get("status") == "done":
                self.files.append((record["file"], record["checksum"]))
                continue
            self.files.append(None)
            self.missing[index] = record.get("error", "failed") if record else "not in the manifest"
        self.load = LoadCachedVolumed("image")

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> dict[str, Any]:
        found = self.files[index]
        if found is None:
            raise VolumeError(f"{self.data[index]['image']}: not in the prepared cache {self.folder}.")
        item = {**self.data[index], "image": str(self.folder / found[0]), "image_checksum": found[1]}
        return self.load(item)

    def describe_missing(self, limit: int = 5) -> str:
        """The first ``limit`` missing entries with their reason, and how many more there are."""
        names = [f"{self.data[i]['image']} ({why})" for i, why in list(self.missing.items())[:limit]]
        more = len(self.missing) - len(names)
        return "; ".join(names) + (f"; and {more} more" if more > 0 else "")


class VoCoStepDataset(Dataset):
    """Sample ``i`` of a training or validation stream is a pure function of ``(seed, i)``.

    Volumes are visited in passes: pass ``e = i // len(data)`` uses the permutation drawn from
    ``(seed, e)`` (or the datalist order when ``shuffle`` is False). The deterministic preprocessing
    runs once per volume: read from the prepared cache when ``volume_cache`` is given (see
    :mod:`voco_components.prepare`), else cached lazily on disk when ``cache_dir`` is given (``PersistentDataset``,
    keyed by the entry and by a hash of the transforms, so a changed spacing or region never reuses a stale cache);
    the random transform (VoCo crops and augmentation) is reseeded from ``(seed, i)`` for every
    sample. A run resumed at step ``s`` therefore sees exactly the samples an uninterrupted run would,
    whatever the number of workers.

    Args:
        data: datalist entries (dicts with ``image``), e.g. from :func:`voco_components.data.datalists.load_datalists`.
        transform: deterministic preprocessing (load, orient, resample, window, crop foreground, resize).
        random_transform: the per-sample random part, e.g. :class:`voco_components.transforms.crops.VoCoCropd`.
        num_samples: length of the stream (steps × global batch size for training).
        seed: seed of the stream.
        shuffle: a new volume order per pass.
        cache_dir: lazy on-disk cache of the preprocessed volumes (keyed by the entry, its files' size and
            modification time, and the transforms); None to preprocess on every access. Unused with
            ``volume_cache``.
        on_bad_volume: ``raise`` (default) stops at an unreadable or invalid volume with a
            :class:`VolumeError` naming it; ``skip`` logs it once and uses the next volume of the pass.
            With ``volume_cache``, entries that are not prepared (missing or failed in the manifest)
            are refused at construction under ``raise`` and skipped, with one warning, under ``skip``.
        volume_cache: the prepared cache to read (``transform`` is then unused: the volumes come out
            uint8 or float16 as stored, and ``random_transform`` must accept that).
    """

    def __init__(
        self,
        data: Sequence[dict[str, Any]],
        transform: Callable,
        random_transform: Randomizable,
        num_samples: int,
        seed: int = 0,
        shuffle: bool = True,
        cache_dir: str | Path | None = None,
        on_bad_volume: str = "raise",
        volume_cache: VolumeCache | None = None,
    ) -> None:
        if not data:
            raise ValueError("VoCoStepDataset needs at least one volume in data.")
        if on_bad_volume not in ON_BAD_VOLUME:
            raise ValueError(f"on_bad_volume must be one of {ON_BAD_VOLUME}, got {on_bad_volume!r}.")
        super().__init__(data=data, transform=transform)
        self.bad_volumes: set[int] = set()
        if volume_cache is not None:
            self.volumes = self._prepared(data, volume_cache, on_bad_volume)
        elif cache_dir is not None:
            self.volumes = PersistentDataset(
                data=data,
                transform=transform,
                cache_dir=cache_dir,
                hash_func=hash_entry_and_files,
                hash_transform=pickle_hashing,
            )
        else:
            self.volumes = Dataset(data=data, transform=transform)
        self.random_transform = random_transform
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.on_bad_volume = on_bad_volume
        self._order: tuple[int, np.ndarray] | None = None

    def _prepared(self, data: Sequence[dict[str, Any]], cache: VolumeCache, on_bad_volume: str) -> PreparedVolumes:
        """The prepared volumes of ``data``; refuses (``raise``) or skips (``skip``) entries not in the cache."""
        volumes = PreparedVolumes(data, cache)
        if volumes.missing and on_bad_volume == "raise":
            raise VolumeError(
                f"{len(volumes.missing)} of {len(data)} volumes are not in the prepared cache {cache.folder}: "
                f"{volumes.describe_missing()}. Run the prepare id for this datalist, or set on_bad_volume='skip'."
            )
        if volumes.missing:
            logger.warning(
                f"skipping {len(volumes.missing)} volumes not in the prepared cache {cache.folder} "
                f"(on_bad_volume='skip'): {volumes.describe_missing()}"
            )
            self.bad_volumes.update(volumes.missing)
        return volumes

    def __len__(self) -> int:
        return self.num_samples

    def pass_order(self, index: int) -> list[int]:
        """Volume indices of the pass that sample ``index`` belongs to."""
        return self._pass_array(index).tolist()

    def _pass_array(self, index: int) -> np.ndarray:
        """:meth:`pass_order` as an array, remembered for the current pass (a pass of 10^5 volumes is long)."""
        n, current = len(self.data), index // len(self.data)
        if self._order is None or self._order[0] != current:
            order = np.random.default_rng([self.seed, current]).permutation(n) if self.shuffle else np.arange(n)
            self._order = (current, order)
        return self._order[1]

    def _load_volume(self, index: int) -> dict[str, Any]:
        order = self._pass_array(index)
        n = len(order)
        for offset in range(n):
            volume = int(order[(index + offset) % n])
            if volume in self.bad_volumes:
                continue
            try:
                return dict(self.volumes[volume])
            except Exception as exc:
                error = volume_error_in(exc)
                if error is None:
                    raise
                if self.on_bad_volume == "raise":
                    raise VolumeError(str(error)) from error.__cause__
                self.bad_volumes.add(volume)
                logger.warning(f"skipping a bad volume (on_bad_volume='skip'): {error}")
        raise VolumeError(f"all {len(self.bad_volumes)} volumes of the datalist are bad; nothing to train on.")

    def __getitem__(self, index: int) -> dict[str, Any]:  # type: ignore[override]
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} is outside the stream of {self.num_samples}.")
        item = self._load_volume(index)
        self.random_transform.set_random_state(seed=sample_seed(self.seed, index))
        return apply_transform(self.random_transform, item)


class ResumableDistributedSampler(DistributedSampler):
    """``DistributedSampler`` over a step-indexed stream, in order, that can start at a given step.

    Rank ``r`` of ``W`` takes stream indices ``r, r + W, r + 2W, ...``, so one optimiser step of
    per-rank batch ``b`` consumes the ``b·W`` consecutive samples of that step on all ranks together.
    :meth:`set_start_step` (called by :class:`voco_components.handlers.checkpoint.ResumeHandler`) skips the
    samples of the steps already done. ``set_epoch`` is inherited; the volume order itself is
    reshuffled per pass by :class:`VoCoStepDataset`.

    Args:
        dataset: the stream.
        batch_size: per-rank batch size.
        num_replicas: world size (the process group's when None).
        rank: this rank (the process group's when None).
    """

    def __init__(self, dataset: Any, batch_size: int, num_replicas: int | None = None, rank: int | None = None) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=False, drop_last=True)
        self.batch_size = int(batch_size)
        self.start = 0

    def set_start_step(self, step: int) -> None:
        """Begin the next iteration at optimiser step ``step``."""
        self.start = int(step) * self.batch_size

    def __iter__(self):
        # DistributedSampler(shuffle=False, drop_last=True) yields rank, rank + W, ... below total_size;
        # a range gives the same indices in constant memory, whatever the length of the stream
        return iter(range(self.rank + self.start * self.num_replicas, self.total_size, self.num_replicas))

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)
