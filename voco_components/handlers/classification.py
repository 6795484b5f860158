"""Classification handlers: the evaluation report (accuracy, per-class AUC, confusion matrix) and the
per-volume class probabilities (JSON and CSV, written atomically)."""

from __future__ import annotations

import csv
import io
import json
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from voco_components.evaluation.reports import json_number, write_class_table
from voco_components.metrics.classification import confusion_matrix, one_vs_rest_auc
from voco_components.utils import atomic_save_text, is_main_process

__all__ = [
    "write_probabilities",
    "ProbabilityCollector",
    "ClassificationReport",
    "ProbabilityWriter",
]


logger = logging.getLogger(__name__)


def _ratio(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """Elementwise numerator / denominator, NaN where the denominator is 0."""
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denominator > 0, numerator / np.maximum(denominator, 1), np.nan)


def write_probabilities(
    output_dir: str | Path,
    stem: str,
    class_names: Sequence[str],
    images: Sequence[str],
    probabilities: np.ndarray,
    labels: np.ndarray | None = None,
) -> tuple[Path, Path]:
    """Write one row per volume to ``<stem>.csv`` and ``<stem>.json`` (atomically).

    CSV columns: ``image``, ``prob_<class>`` for every class, ``prediction`` (the most probable class)
    and, with ``labels``, ``label``. The JSON holds ``class_names`` and ``volumes``: per volume ``image``,
    ``probabilities`` (class name -> probability), ``prediction`` and, with labels, ``label``.

    Args:
        output_dir: folder of the two files.
        stem: file name without extension.
        class_names: names of the C classes.
        images: the N input paths.
        probabilities: (N, C).
        labels: (N,) class indices, or None.

    Returns:
        the CSV and JSON paths.
    """
    probabilities = np.asarray(probabilities, dtype=np.float64)
    predictions = probabilities.argmax(axis=1) if len(probabilities) else np.zeros(0, dtype=np.int64)
    volumes = []
    for i, image in enumerate(images):
        volume: dict[str, Any] = {
            "image": str(image),
            "probabilities": {name: float(p) for name, p in zip(class_names, probabilities[i], strict=True)},
            "prediction": class_names[int(predictions[i])],
        }
        if labels is not None:
            volume["label"] = class_names[int(labels[i])]
        volumes.append(volume)
    buffer = io.StringIO()
    columns = ["image", *(f"prob_{name}" for name in class_names), "prediction"] + (
        ["label"] if labels is not None else []
    )
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for volume in volumes:
        label = [volume["label"]] if labels is not None else []
        writer.writerow(
            [volume["image"], *(repr(p) for p in volume["probabilities"].values()), volume["prediction"], *label]
        )
    output_dir = Path(output_dir)
    csv_path, json_path = output_dir / f"{stem}.csv", output_dir / f"{stem}.json"
    atomic_save_text(buffer.getvalue(), csv_path)
    record = {"class_names": list(class_names), "volumes": volumes}
    atomic_save_text(json.dumps(record, indent=4) + "\n", json_path)
    return csv_path, json_path


class ProbabilityCollector(ABC):
    """Collect each evaluated volume's input path, class probabilities and (when given) label; subclasses
    change :meth:`check` and :meth:`read_label` for other kinds of output (multi-label: sigmoid outputs).

    Needs a decollating evaluator whose ``postprocessing`` leaves softmax probabilities (C,) in
    ``pred``, and the input path under ``path_key`` in each batch item (e.g. ``CopyItemsd`` of the image
    path before loading). Collection restarts at every run of the engine.
    """

    def __init__(self, class_names: Sequence[str], path_key: str = "source_path") -> None:
        self.class_names = list(class_names)
        self.path_key = path_key
        self.images: list[str] = []
        self.probabilities: list[np.ndarray] = []
        self.labels: list[int | None] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.COMPLETED, self._complete)

    def _reset(self, engine: Engine) -> None:
        self.images, self.probabilities, self.labels = [], [], []

    def _collect(self, engine: Engine) -> None:
        batch, output = engine.state.batch, engine.state.output
        if not isinstance(output, list) or not isinstance(batch, list):
            raise TypeError(f"{type(self).__name__} needs a decollating evaluator (decollate=True).")
        for item, result in zip(batch, output, strict=True):
            probabilities = torch.as_tensor(result["pred"]).detach().cpu().double().flatten().numpy()
            self.check(item[self.path_key], probabilities)
            label = result.get("label")
            self.images.append(str(item[self.path_key]))
            self.probabilities.append(probabilities)
            self.labels.append(None if label is None else self.read_label(torch.as_tensor(label)))

    def check(self, path: str, probabilities: np.ndarray) -> None:
        """Refuse a ``pred`` that is not C softmax probabilities, naming the input."""
        if probabilities.shape != (len(self.class_names),) or not np.isclose(probabilities.sum(), 1.0, atol=1e-4):
            raise ValueError(
                f"{path}: pred must be {len(self.class_names)} softmax probabilities, got "
                f"{probabilities.tolist()}; put Activationsd(keys='pred', softmax=True) in the postprocessing."
            )

    def read_label(self, label: torch.Tensor) -> Any:
        """The class index of a label tensor."""
        return int(label.item())

    def _stacked(self) -> np.ndarray:
        return np.stack(self.probabilities) if self.probabilities else np.zeros((0, len(self.class_names)))

    def _complete(self, engine: Engine) -> None:
        if is_main_process():
            self.write()

    @abstractmethod
    def write(self) -> None:
        """Write the files of the volumes collected in the last run."""


class ClassificationReport(ProbabilityCollector):
    """Evaluator handler: after each run, write accuracy, per-class AUC and the confusion matrix.

    Files in ``output_dir``: ``metrics.json`` and ``metrics.csv`` (per class: one-vs-rest ``auc``,
    ``sensitivity`` (recall), ``precision``; whole set: ``accuracy``, ``mean_auc`` over the classes with a
    defined AUC, ``mean_sensitivity`` (balanced accuracy), ``confusion_matrix`` (row = true class, column =
    predicted class), ``num_volumes`` and ``extra``), and ``predictions.json`` / ``predictions.csv``
    (:func:`write_probabilities` with the labels). Every volume needs a label.

    Args:
        output_dir: folder of the report, e.g. ``<output_dir>/eval``.
        class_names: names of the classes, in label order.
        extra: further JSON-serialisable facts for ``metrics.json`` (the checkpoint evaluated, the fold, ...).
        path_key: batch key of the input path.
    """

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Sequence[str],
        extra: dict[str, Any] | None = None,
        path_key: str = "source_path",
    ) -> None:
        super().__init__(class_names, path_key)
        self.output_dir = Path(output_dir)
        self.extra = dict(extra or {})

    def summary(self) -> dict[str, Any]:
        """Whole-set figures of the volumes collected so far, and per-class ``auc``, ``sensitivity``, ``precision``."""
        if not self.probabilities or None in self.labels:
            raise ValueError("the classification report needs at least one volume, each with a label.")
        probabilities, labels = self._stacked(), np.asarray(self.labels)
        matrix = confusion_matrix(labels, probabilities.argmax(axis=1), len(self.class_names))
        auc = one_vs_rest_auc(probabilities, labels)
        sensitivity = _ratio(np.diag(matrix), matrix.sum(axis=1))
        return {
            "auc": auc,
            "sensitivity": sensitivity,
            "precision": _ratio(np.diag(matrix), matrix.sum(axis=0)),
            "accuracy": float(np.trace(matrix) / matrix.sum()),
            "mean_auc": float(np.nanmean(auc)) if np.isfinite(auc).any() else float("nan"),
            "mean_sensitivity": float(np.nanmean(sensitivity)),
            "confusion_matrix": matrix.tolist(),
            "num_volumes": int(matrix.sum()),
        }

    def write(self) -> None:
        summary = self.summary()
        columns = {name: summary.pop(name) for name in ("auc", "sensitivity", "precision")}
        summary["confusion_matrix_axes"] = "rows: true class, columns: predicted class"
        summary["extra"] = self.extra
        write_class_table(self.output_dir, "metrics", self.class_names, columns, summary)
        write_probabilities(
            self.output_dir, "predictions", self.class_names, self.images, self._stacked(), np.asarray(self.labels)
        )
        auc = ", ".join(f"{n} {json_number(a)}" for n, a in zip(self.class_names, columns["auc"], strict=True))
        logger.info(
            f"{summary['num_volumes']} volumes: accuracy {summary['accuracy']:.4f}, AUC {auc}; "
            f"confusion matrix {summary['confusion_matrix']}; wrote {self.output_dir / 'metrics.json'}"
        )


class ProbabilityWriter(ProbabilityCollector):
    """Inference handler: after each run, write every volume's class probabilities with its input path.

    Files: ``<output_dir>/<stem>.json`` and ``<output_dir>/<stem>.csv`` (:func:`write_probabilities`).

    Args:
        output_dir: destination folder.
        class_names: names of the classes, in output order.
        stem: file name without extension.
        path_key: batch key of the input path.
    """

    def __init__(
        self,
        output_dir: str | Path,
        class_names: Sequence[str],
        stem: str = "probabilities",
        path_key: str = "source_path",
    ) -> None:
        super().__init__(class_names, path_key)
        self.output_dir = Path(output_dir)
        self.stem = stem

    write_table = staticmethod(write_probabilities)
    """Writes ``<stem>.csv`` and ``<stem>.json``; multi-label writers write their own columns."""

    def write(self) -> None:
        csv_path, _ = self.write_table(self.output_dir, self.stem, self.class_names, self.images, self._stacked())
        logger.info(f"wrote the class probabilities of {len(self.images)} inputs to {csv_path} and .json")
