"""Write the per-class Dice of a segmentation evaluation as CSV and JSON tables."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from ignite.engine import Engine, Events

from voco_components.evaluation.reports import json_number, write_class_table
from voco_components.utils import is_main_process

__all__ = [
    "DiceTableWriter",
]


logger = logging.getLogger(__name__)


class DiceTableWriter:
    """Evaluator handler: after each evaluation, write the Dice of every class and their mean.

    Reads ``engine.state.metrics[metric_name]``, the per-class Dice averaged over cases (e.g.
    :class:`PerClassDice` through ``IgniteMetricHandler``: a tensor of shape (C,)), and writes
    ``<output_dir>/<stem>.csv`` and ``<stem>.json`` with one row per class plus the mean over classes.
    Classes absent from every case (NaN) are left out of the mean and written as ``n/a`` (CSV) / null
    (JSON); the JSON's ``num_classes_present`` says how many classes the mean is over.

    Args:
        output_dir: folder of the report, e.g. ``<output_dir>/eval``.
        class_names: one name per channel of the metric, in order (e.g. the 13 BTCV organs).
        metric_name: the per-class metric.
        stem: file name of the report without extension.
        extra: further JSON-serialisable facts for the JSON report (e.g. the checkpoint evaluated).
    """

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Sequence[str],
        metric_name: str = "val_dice_per_class",
        stem: str = "dice",
        extra: dict | None = None,
    ) -> None:
        self.output_dir = Path(output_dir)
        self.class_names = list(class_names)
        self.metric_name = metric_name
        self.stem = stem
        self.extra = dict(extra or {})

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not is_main_process():
            return
        values = torch.as_tensor(engine.state.metrics[self.metric_name], dtype=torch.float64).flatten()
        if values.numel() != len(self.class_names):
            raise ValueError(
                f"{self.metric_name} has {values.numel()} values for {len(self.class_names)} class names "
                f"({self.class_names}): check class_names and include_background."
            )
        mean = float(torch.nanmean(values)) if bool(torch.isfinite(values).any()) else float("nan")
        present = int(torch.isfinite(values).sum())
        summary = {
            "mean_dice": json_number(mean),
            "num_classes_present": present,
            "num_cases": len(engine.state.dataloader.dataset),
            **self.extra,
        }
        csv_path, _ = write_class_table(
            self.output_dir, self.stem, self.class_names, {"dice": values.tolist()}, summary, missing="n/a"
        )
        logger.info(
            f"mean Dice {mean:.4f} over the {present} of {len(self.class_names)} classes present; "
            f"per-class table in {csv_path}"
        )
