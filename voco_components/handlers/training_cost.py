"""Record what a training step costs: seconds per step, peak memory, crops and voxels per step."""

from __future__ import annotations

import json
import math
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine, Events

from voco_components.utils import atomic_save_text, is_main_process

__all__ = ["crops_in", "peak_memory_mib", "TrainingCostHandler"]


def crops_in(images: torch.Tensor) -> tuple[int, int]:
    """(crops, voxels) of a batch of 3D crops (..., C, X, Y, Z): every leading entry is one network input crop."""
    if images.ndim < 5:
        raise ValueError(f"a batch of crops has shape (..., C, X, Y, Z), got {tuple(images.shape)}.")
    crops = math.prod(images.shape[:-4])
    return crops, crops * math.prod(images.shape[-3:])


def peak_memory_mib(device: torch.device) -> tuple[float, str]:
    """The peak memory of this process in MiB and what it measures: CUDA's peak allocation, or the peak RSS."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20, "cuda_max_memory_allocated"
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "peak_rss"  # KiB on Linux


class TrainingCostHandler:
    """Trainer handler: at the end of training, write the cost of a step to ``path`` (JSON, atomically, rank 0).

    A step is timed from the request of its batch to the end of its optimiser update (so it includes any wait for
    data; validation and checkpointing, which run between epochs, are not in it). The record holds the steps timed
    by this run (a resumed run times its own), ``seconds_per_step`` (their median; the first step, which also
    fills caches, is left out when there are more), the mean, the peak memory of the process, and
    ``crops_per_step`` / ``voxels_per_step`` per rank (network input crops of the batch, all crops and views
    counted) with the ``world_size``.

    Args:
        path: the JSON file, e.g. ``<output_dir>/cost.json``.
        image_key: the batch key of the crops.
    """

    def __init__(self, path: str | Path, image_key: str = "image") -> None:
        self.path = Path(path)
        self.image_key = image_key
        self.times: list[float] = []
        self.shape: tuple[int, int] | None = None
        self._start = 0.0

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.GET_BATCH_STARTED, self._started)
        engine.add_event_handler(Events.GET_BATCH_COMPLETED, self._batch)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._completed)
        engine.add_event_handler(Events.COMPLETED, self.write)

    def _started(self, engine: Engine) -> None:
        self._start = time.perf_counter()

    def _batch(self, engine: Engine) -> None:
        if self.shape is None:  # the collated batch (MONAI decollates it after the iteration)
            self.shape = crops_in(torch.as_tensor(engine.state.batch[self.image_key]))

    def _completed(self, engine: Engine) -> None:
        self.times.append(time.perf_counter() - self._start)

    def summary(self, device: torch.device) -> dict[str, Any]:
        """The cost record (see the class docstring)."""
        timed = self.times[1:] if len(self.times) > 1 else self.times
        peak, kind = peak_memory_mib(device)
        crops, voxels = self.shape or (0, 0)
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        return {
            "steps_timed": len(self.times),
            "seconds_per_step": statistics.median(timed) if timed else float("nan"),
            "mean_seconds_per_step": statistics.fmean(timed) if timed else float("nan"),
            "peak_memory_mib": peak,
            "peak_memory": kind,
            "crops_per_step": crops,
            "voxels_per_step": voxels,
            "world_size": torch.distributed.get_world_size() if distributed else 1,
            "device": str(device),
        }

    def write(self, engine: Engine) -> None:
        if not is_main_process():
            return
        device = torch.device(engine.state.device or "cpu")  # MONAI's workflows keep their device in the state
        atomic_save_text(json.dumps(self.summary(device), indent=4) + "\n", self.path)
