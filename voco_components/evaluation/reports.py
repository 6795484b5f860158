"""Per-class result tables (CSV and JSON, written atomically) shared by the downstream bundles."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from voco_components.utils import atomic_save_text

__all__ = ["json_number", "write_class_table"]


def json_number(value: float | None) -> float | None:
    """``value`` as a JSON-safe float: None, NaN and infinities (e.g. a class absent from every case) become None."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def write_class_table(
    output_dir: str | Path,
    stem: str,
    class_names: Sequence[str],
    columns: Mapping[str, Sequence[float]],
    summary: Mapping[str, Any],
    missing: str = "",
) -> tuple[Path, Path]:
    """Write one row per class to ``<stem>.csv`` and the same table plus ``summary`` to ``<stem>.json``.

    Args:
        output_dir: folder of the two files (created if needed).
        stem: file name without extension, e.g. ``dice``.
        class_names: row names, in channel order.
        columns: column name -> one value per class, e.g. ``{"dice": [...]}``.
        summary: whole-set figures, e.g. ``{"mean_dice": 0.8}``; the CSV gets them as a last row
            named ``mean`` when they share a column's name prefixed by ``mean_``.
        missing: what the CSV writes for a missing value (None, NaN), e.g. ``n/a``; the JSON writes null.

    Returns:
        the CSV and JSON paths.

    Raises:
        ValueError: a column's length differs from the number of classes.
    """
    for name, values in columns.items():
        if len(values) != len(class_names):
            raise ValueError(f"column '{name}' has {len(values)} values for {len(class_names)} classes.")
    rows = [
        {"class": cls, **{name: json_number(values[i]) for name, values in columns.items()}}
        for i, cls in enumerate(class_names)
    ]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=["class", *columns], lineterminator="\n")
    writer.writeheader()
    writer.writerows([{k: missing if v is None else v for k, v in row.items()} for row in rows])
    means = {name: json_number(summary[f"mean_{name}"]) for name in columns if f"mean_{name}" in summary}
    if means:
        writer.writerow({"class": "mean", **{name: missing if v is None else v for name, v in means.items()}})
    output_dir = Path(output_dir)
    csv_path, json_path = output_dir / f"{stem}.csv", output_dir / f"{stem}.json"
    atomic_save_text(buffer.getvalue(), csv_path)
    record = {"classes": rows, **{k: json_number(v) if isinstance(v, float) else v for k, v in summary.items()}}
    atomic_save_text(json.dumps(record, indent=4) + "\n", json_path)
    return csv_path, json_path
