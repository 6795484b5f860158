"""Per-class Dice over the cases that hold each class."""

from __future__ import annotations

import torch
from monai.metrics import DiceMetric

__all__ = [
    "PerClassDice",
]


class PerClassDice(DiceMetric):
    """``DiceMetric`` whose aggregate is each class's Dice averaged over the cases whose label holds it.

    With ``ignore_empty`` (the default) a case whose label lacks a class gives NaN for it, whatever the
    prediction; the aggregate is the NaN-ignoring mean over cases, so a class absent from every case is NaN
    (BTCV's "n/a"), not 0 as ``DiceMetric(reduction="mean_batch")`` reports it. Takes ``DiceMetric``'s
    arguments; the ``reduction`` is not used.

    Returns from ``aggregate``: (C,) float Dice per class, NaN for a class absent from every case.
    """

    def aggregate(self, reduction: str | None = None) -> torch.Tensor:  # noqa: ARG002 (DiceMetric's signature)
        data = self.get_buffer()
        if not isinstance(data, torch.Tensor):
            raise ValueError(f"PerClassDice has no per-case values to aggregate (buffer {type(data).__name__}).")
        return torch.nanmean(data.double().reshape(-1, data.shape[-1]), dim=0)
