"""Classification datalists: training, validation and testing entries with integer class labels (or, multi-label,
lists of 0/1 per class), from k-fold datalists, decathlon-style files, folders or glob patterns."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from voco_components.data.datalists import load_datalists, volume_files
from voco_components.data.folds import fold_split
from voco_components.utils import RADIOGRAPH_SUFFIXES

__all__ = [
    "SUBSETS",
    "load_classification_datalist",
    "load_multilabel_datalist",
]


SUBSETS = ("training", "validation", "testing")


def _check_labels(
    entries: list[dict[str, Any]], source: str, num_classes: int | None, require_labels: bool
) -> list[dict[str, Any]]:
    """Every present ``label`` is an integer class index below ``num_classes``; required when ``require_labels``."""
    for entry in entries:
        if "label" not in entry:
            if require_labels:
                raise ValueError(f"{source}: entry {entry['image']} has no 'label' (an integer class index).")
            continue
        label = entry["label"]
        if isinstance(label, bool) or not isinstance(label, int):
            raise ValueError(
                f"{source}: entry {entry['image']} has label {label!r}; labels must be integer class indices."
            )
        if label < 0 or (num_classes is not None and label >= num_classes):
            allowed = "0 or more" if num_classes is None else f"0..{num_classes - 1}"
            raise ValueError(f"{source}: entry {entry['image']} has label {label}, outside {allowed}.")
    return entries


def load_classification_datalist(
    datalist: str | Path | Sequence[str | Path],
    dataset_dir: str | Path,
    subset: str = "training",
    fold: int | None = None,
    num_classes: int | None = None,
    require_labels: bool = True,
) -> list[dict[str, Any]]:
    """The ``training``, ``validation`` or ``testing`` entries of a classification datalist, image paths made absolute.

    Args:
        datalist: one or several datalists (:func:`voco_components.data.datalists.load_datalists`): decathlon-style JSON
            files whose ``subset`` lists are merged, folders of volumes or glob patterns (all their volumes,
            whatever the ``subset``); with a ``fold``, one k-fold datalist as written by
            :func:`voco_components.apps.ccii.convert_dataset` (``fold0`` ... ``fold<k-1>``).
        dataset_dir: folder that relative image paths resolve against.
        subset: ``training``, ``validation`` or ``testing``; with a ``fold``, validation is that fold and
            training all the other folds (:func:`voco_components.data.folds.fold_split`), while ``testing`` is
            the datalist's own ``testing`` list.
        fold: the held-out fold, or None to read the ``subset`` list itself. Folders and patterns have no folds:
            the fold is not used for them.
        num_classes: labels must lie in 0..num_classes-1 (not checked when None).
        require_labels: every entry needs a ``label``; False accepts entries without one (inference).

    Returns:
        entries ``{"image": absolute path, "label": int, ...}`` in datalist order.

    Raises:
        FileNotFoundError: a datalist does not exist.
        ValueError: an unknown ``subset``, several JSON datalists with a ``fold``, a missing ``fold`` or list,
            or a label that is missing, not an integer, or out of range; the message names the datalist.
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}.")
    sources = [datalist] if isinstance(datalist, (str, Path)) else list(datalist)
    by_fold = fold is not None and subset != "testing"
    if not by_fold or any(volume_files(source) is not None for source in sources):
        entries = load_datalists(datalist, dataset_dir, subset)
        source = str(datalist)
    else:
        if len(sources) != 1:
            raise ValueError(f"a fold is read from one k-fold datalist, got {len(sources)}: {sources}.")
        train, val = fold_split(sources[0], fold)
        entries = [
            {**entry, "image": str(Path(dataset_dir) / entry["image"])}
            for entry in (train if subset == "training" else val)
        ]
        source = f"{sources[0]} (fold {fold})"
    return _check_labels(entries, source, num_classes, require_labels)


def _check_multilabels(
    entries: list[dict[str, Any]], source: str, num_classes: int | None, require_labels: bool
) -> list[dict[str, Any]]:
    """Every present ``label`` is a list of ``num_classes`` zeros and ones; required when ``require_labels``."""
    for entry in entries:
        if "label" not in entry:
            if require_labels:
                raise ValueError(f"{source}: entry {entry['image']} has no 'label' (a list of 0/1, one per class).")
            continue
        label = entry["label"]
        valid = isinstance(label, list) and all(v in (0, 1) and not isinstance(v, float) for v in label)
        if not valid or (num_classes is not None and len(label) != num_classes):
            size = "one per class" if num_classes is None else f"{num_classes} of them"
            raise ValueError(
                f"{source}: entry {entry['image']} has label {label!r}; multi-label entries need a list of 0/1 "
                f"({size})."
            )
    return entries


def load_multilabel_datalist(
    datalist: str | Path | Sequence[str | Path],
    dataset_dir: str | Path,
    subset: str = "training",
    num_classes: int | None = None,
    require_labels: bool = True,
    suffixes: Sequence[str] = RADIOGRAPH_SUFFIXES,
) -> list[dict[str, Any]]:
    """The ``training``, ``validation`` or ``testing`` entries of a multi-label datalist, image paths made absolute.

    Args:
        datalist: one or several decathlon-style JSON files whose ``subset`` lists are merged (entries
            ``{"image": path, "label": [0, 1, ...]}``, e.g. from :mod:`voco_components.apps.cxr14`), or images
            without a datalist: folders or glob patterns of files ending in ``suffixes`` (all of them, whatever
            the ``subset``).
        dataset_dir: folder that relative image paths resolve against.
        subset: ``training``, ``validation`` or ``testing``.
        num_classes: labels must hold this many entries (not checked when None).
        require_labels: every entry needs a ``label``; False accepts entries without one (inference).
        suffixes: the file endings a folder or pattern takes (radiographs by default).

    Returns:
        entries ``{"image": absolute path, "label": [0/1, ...], ...}`` in datalist order.

    Raises:
        FileNotFoundError: a datalist does not exist.
        ValueError: an unknown ``subset``, a missing list, or a label that is missing or not a list of
            ``num_classes`` zeros and ones; the message names the datalist and the entry.
    """
    if subset not in SUBSETS:
        raise ValueError(f"subset must be one of {SUBSETS}, got {subset!r}.")
    entries = load_datalists(datalist, dataset_dir, subset, suffixes)
    return _check_multilabels(entries, str(datalist), num_classes, require_labels)
