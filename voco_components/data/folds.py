"""K-fold datalists (``fold0`` ... ``fold<k-1>`` lists of entries): read one cross-validation round back."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from voco_components.data.datalists import read_json

__all__ = [
    "fold_split",
]


_FOLD_KEY = re.compile(r"fold([0-9]+)")


def read_folds(datalist_path: str | Path) -> tuple[Path, list[list[dict[str, Any]]]]:
    path = Path(datalist_path)
    content = read_json(path, "datalist")
    if not isinstance(content, dict):
        raise ValueError(f"{path}: expected a JSON object with fold0, fold1, ... lists.")
    numbers = sorted(int(m.group(1)) for key in content if (m := _FOLD_KEY.fullmatch(key)))
    if len(numbers) < 2 or numbers != list(range(len(numbers))):
        raise ValueError(f"{path}: expected lists fold0 ... fold<k-1> with k >= 2, found folds {numbers}.")
    folds = []
    for n in numbers:
        if not isinstance(content[f"fold{n}"], list):
            raise ValueError(f"{path}: 'fold{n}' must be a list, got {type(content[f'fold{n}']).__name__}.")
        folds.append([dict(e) for e in content[f"fold{n}"]])
    return path, folds


def fold_split(datalist_path: str | Path, fold: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Training and validation entries of one cross-validation round.

    Args:
        datalist_path: a datalist written by :func:`convert_dataset`.
        fold: the validation fold, 0 to k-1.

    Returns:
        ``(train, val)``: the entries of all other folds in fold order, and those of ``fold``; image paths
        stay relative to the datalist's folder, as stored.

    Raises:
        FileNotFoundError: the datalist does not exist.
        ValueError: it is not valid JSON, has no contiguous ``fold0`` ... lists, or ``fold`` is out of range.
    """
    path, folds = read_folds(datalist_path)
    if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < len(folds):
        raise ValueError(f"{path}: fold must be an integer from 0 to {len(folds) - 1}, got {fold!r}.")
    train = [entry for i, entries in enumerate(folds) if i != fold for entry in entries]
    return train, folds[fold]
