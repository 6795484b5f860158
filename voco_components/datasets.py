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

from voco_components.data import VolumeError

__all__ = ["sample_seed", "hash_entry_and_files", "VoCoStepDataset", "ResumableDistributedSampler"]

logger = logging.getLogger(__name__)
ON_BAD_VOLUME = ("raise", "skip")


def sample_seed(seed: int, index: int) -> int:
    """A 32-bit seed for sample ``index`` of a stream seeded with ``seed`` (independent across indices)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1)[0])


def hash_entry_and_files(item: Any) -> bytes:
    """Cache key of a datalist entry that also changes when one of its files changes.

    ``PersistentDataset`` keys its cache on the entry alone by default, so an image or label file that
    is replaced under the same path would keep being served from a stale cache. This adds the size
    and modification time of every existing file the entry names.
    """

    def stats(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [stats(v) for v in value]
        if isinstance(value, (str, Path)) and Path(value).is_file():
            info = Path(value).stat()
            return [str(value), info.st_size, info.st_mtime_ns]
        return value

    entry = {str(k): stats(v) for k, v in item.items()} if isinstance(item, dict) else stats(item)
    return pickle_hashing(entry)


def _volume_error(exc: BaseException) -> VolumeError | None:
    """The :class:`VolumeError` in an exception chain (MONAI wraps transform errors in RuntimeError)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, VolumeError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class VoCoStepDataset(Dataset):
    """Sample ``i`` of a training or validation stream is a pure function of ``(seed, i)``.

    Volumes are visited in passes: pass ``e = i // len(data)`` uses the permutation drawn from
    ``(seed, e)`` (or the datalist order when ``shuffle`` is False). The deterministic preprocessing
    runs once per volume and is cached on disk when ``cache_dir`` is given (``PersistentDataset``, keyed
    by the entry and by a hash of the transforms, so a changed spacing or region never reuses a stale cache);
    the random transform (VoCo crops and augmentation) is reseeded from ``(seed, i)`` for every
    sample. A run resumed at step ``s`` therefore sees exactly the samples an uninterrupted run would,
    whatever the number of workers.

    Args:
        data: datalist entries (dicts with ``image``), e.g. from :func:`voco_components.data.load_datalists`.
        transform: deterministic preprocessing (load, orient, resample, window, crop foreground, resize).
        random_transform: the per-sample random part, e.g. :class:`voco_components.transforms.VoCoCropd`.
        num_samples: length of the stream (steps × global batch size for training).
        seed: seed of the stream.
        shuffle: a new volume order per pass.
        cache_dir: on-disk cache of the preprocessed volumes (keyed by the entry, its files' size and
            modification time, and the transforms); None to preprocess on every access.
        on_bad_volume: ``raise`` (default) stops at an unreadable or invalid volume with a
            :class:`VolumeError` naming it; ``skip`` logs it once and uses the next volume of the pass.
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
    ) -> None:
        if not data:
            raise ValueError("VoCoStepDataset needs at least one volume in data.")
        if on_bad_volume not in ON_BAD_VOLUME:
            raise ValueError(f"on_bad_volume must be one of {ON_BAD_VOLUME}, got {on_bad_volume!r}.")
        super().__init__(data=data, transform=transform)
        self.volumes = (
            PersistentDataset(
                data=data,
                transform=transform,
                cache_dir=cache_dir,
                hash_func=hash_entry_and_files,
                hash_transform=pickle_hashing,
            )
            if cache_dir is not None
            else Dataset(data=data, transform=transform)
        )
        self.random_transform = random_transform
        self.num_samples = int(num_samples)
        self.seed = int(seed)
        self.shuffle = shuffle
        self.on_bad_volume = on_bad_volume
        self.bad_volumes: set[int] = set()

    def __len__(self) -> int:
        return self.num_samples

    def pass_order(self, index: int) -> list[int]:
        """Volume indices of the pass that sample ``index`` belongs to."""
        n = len(self.data)
        if not self.shuffle:
            return list(range(n))
        return np.random.default_rng([self.seed, index // n]).permutation(n).tolist()

    def _load_volume(self, index: int) -> dict[str, Any]:
        order = self.pass_order(index)
        start = index % len(order)
        for volume in order[start:] + order[:start]:
            if volume in self.bad_volumes:
                continue
            try:
                return dict(self.volumes[volume])
            except Exception as exc:
                error = _volume_error(exc)
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
    :meth:`set_start_step` (called by :class:`voco_components.checkpoint.ResumeHandler`) skips the
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
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.start)
