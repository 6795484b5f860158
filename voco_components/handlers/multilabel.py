"""Multi-label classification handlers: the evaluation report (per-class AUC and its mean, the classes the set cannot
score named) and the per-image class probabilities (JSON and CSV, written atomically)."""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from voco_components.evaluation.reports import json_number, write_class_table
from voco_components.handlers.classification import ClassificationReport, ProbabilityCollector, ProbabilityWriter
from voco_components.metrics.multilabel import auc_summary
from voco_components.utils import atomic_save_text

__all__ = [
    "write_multilabel_probabilities",
    "MultiLabelReport",
    "MultiLabelProbabilityWriter",
]

logger = logging.getLogger(__name__)


def write_multilabel_probabilities(
    output_dir: str | Path,
    stem: str,
    class_names: Sequence[str],
    images: Sequence[str],
    probabilities: np.ndarray,
    labels: np.ndarray | None = None,
) -> tuple[Path, Path]:
    """Write one row per image to ``<stem>.csv`` and ``<stem>.json`` (atomically).

    CSV columns: ``image``, ``prob_<class>`` for every class and, with ``labels``, ``label_<class>``. The JSON holds
    ``class_names`` and ``images``: per image ``image``, ``probabilities`` (class name -> probability) and, with
    labels, ``labels`` (class name -> 0 or 1). Each probability is independent (sigmoid outputs: they do not sum
    to 1).

    Args:
        output_dir: folder of the two files.
        stem: file name without extension.
        class_names: names of the C classes.
        images: the N input paths.
        probabilities: (N, C) in [0, 1].
        labels: (N, C) zeros and ones, or None.

    Returns:
        the CSV and JSON paths.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(len(images), len(class_names))
    rows = []
    for i, image in enumerate(images):
        row: dict[str, Any] = {
            "image": str(image),
            "probabilities": {n: float(p) for n, p in zip(class_names, probabilities[i], strict=True)},
        }
        if labels is not None:
            row["labels"] = {n: int(v) for n, v in zip(class_names, labels[i], strict=True)}
        rows.append(row)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    label_columns = [f"label_{n}" for n in class_names] if labels is not None else []
    writer.writerow(["image", *(f"prob_{n}" for n in class_names), *label_columns])
    for row in rows:
        label_cells = list(row["labels"].values()) if labels is not None else []
        writer.writerow([row["image"], *(repr(p) for p in row["probabilities"].values()), *label_cells])
    output_dir = Path(output_dir)
    csv_path, json_path = output_dir / f"{stem}.csv", output_dir / f"{stem}.json"
    atomic_save_text(buffer.getvalue(), csv_path)
    atomic_save_text(json.dumps({"class_names": list(class_names), "images": rows}, indent=4) + "\n", json_path)
    return csv_path, json_path


class _MultiLabelCollector(ProbabilityCollector):
    """Collect each evaluated image's input path, class probabilities and (when given) 0/1 labels.

    Needs a decollating evaluator whose ``postprocessing`` leaves sigmoid probabilities (C,) in ``pred`` and the
    input path under ``path_key`` in each batch item (``CopyItemsd`` of the image path before loading).
    Collection restarts at every run of the engine; the files are written by the main process.
    """

    def check(self, path: str, probabilities: np.ndarray) -> None:
        """Refuse a ``pred`` that is not C probabilities in [0, 1], naming the input."""
        in_range = bool(((probabilities >= 0) & (probabilities <= 1)).all())
        if probabilities.shape != (len(self.class_names),) or not in_range:
            raise ValueError(
                f"{path}: pred must be {len(self.class_names)} probabilities in [0, 1], got "
                f"{probabilities.tolist()}; put Activationsd(keys='pred', sigmoid=True) in the postprocessing."
            )

    def read_label(self, label: torch.Tensor) -> np.ndarray:
        """The (C,) 0/1 labels of a label tensor."""
        return label.cpu().flatten().round().numpy()


class MultiLabelReport(_MultiLabelCollector, ClassificationReport):
    """Evaluator handler: after each run, write per-class AUCs, their mean and every image's probabilities.

    Files in ``output_dir``: ``metrics.json`` and ``metrics.csv`` (per class: ``auc``, the number of
    ``positives`` and ``negatives``; whole set: ``mean_auc`` over the classes the set can score,
    ``num_classes_scored``, ``absent`` (class -> why it has no AUC: no positive or no negative image; its AUC
    is null in the JSON and ``absent`` in the CSV, and it is not in the mean), ``num_images`` and ``extra``),
    and ``predictions.json`` / ``predictions.csv`` (:func:`write_multilabel_probabilities` with the labels).

    Args:
        output_dir: folder of the report, e.g. ``<output_dir>/eval``.
        class_names: names of the classes, in output order.
        extra: further JSON-serialisable facts for ``metrics.json`` (the checkpoint, the datalist, ...).
        path_key: batch key of the input path.
    """

    def summary(self) -> dict[str, Any]:
        """:func:`voco_components.metrics.multilabel.auc_summary` of the images collected so far."""
        if not self.probabilities or any(label is None for label in self.labels):
            raise ValueError("the multi-label report needs at least one image, each with its labels.")
        return auc_summary(self._stacked(), np.stack(self.labels), self.class_names)

    def write(self) -> None:
        summary = self.summary()
        columns = {name: summary.pop(name) for name in ("auc", "positives", "negatives")}
        record = {
            "mean_auc": summary["mean_auc"],
            "num_classes_scored": summary["num_scored"],
            "absent": summary["absent"],
            "num_images": len(self.images),
            "extra": self.extra,
        }
        write_class_table(self.output_dir, "metrics", self.class_names, columns, record, missing="absent")
        labels = np.stack(self.labels)
        write_multilabel_probabilities(
            self.output_dir, "predictions", self.class_names, self.images, self._stacked(), labels
        )
        absent = f"; no AUC (left out of the mean): {', '.join(summary['absent'])}" if summary["absent"] else ""
        logger.info(
            f"{len(self.images)} images: mean AUC {json_number(summary['mean_auc'])} over {summary['num_scored']} "
            f"classes{absent}; wrote {self.output_dir / 'metrics.json'}"
        )


class MultiLabelProbabilityWriter(_MultiLabelCollector, ProbabilityWriter):
    """Inference handler: after each run, write every image's class probabilities with its input path.

    Files: ``<output_dir>/<stem>.json`` and ``<output_dir>/<stem>.csv`` (:func:`write_multilabel_probabilities`);
    the arguments are :class:`~voco_components.handlers.classification.ProbabilityWriter`'s.
    """

    write_table = staticmethod(write_multilabel_probabilities)
