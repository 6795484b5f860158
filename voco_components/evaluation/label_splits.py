"""Nested label-budget splits: seeded permutations of volumes or patients (stratified by class), prefixes per budget."""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "BUDGET_UNITS",
    "budget_key",
    "per_class_count",
    "volume_splits",
    "patient_splits",
    "patient_sample_splits",
    "splits_hash",
    "splits_text",
]

BUDGET_UNITS = ("volumes", "patients_per_class", "patients", "fraction")
"""``volumes``: labelled volumes (segmentation); ``patients_per_class``: patients of each class;
``patients``: patients, whatever their findings (multi-label classification); ``fraction``: a fraction of the
patients (of each class for single-label classification)."""


def budget_key(budget: float) -> str:
    """The text form of a budget used in file names and JSON keys: ``1``, ``24``, ``0.05``."""
    return f"{budget:g}"


def _round_half_up(value: float) -> int:
    return int(math.floor(value + 0.5))


def per_class_count(budget: float, num_patients: int, unit: str) -> int:
    """Patients taken from a class of ``num_patients`` for ``budget``: at least one, at most all of them.

    ``patients_per_class``: ``budget`` itself; ``fraction``: ``budget * num_patients`` rounded half up.
    """
    if unit == "patients_per_class":
        wanted = int(budget)
    elif unit == "fraction":
        if not 0.0 < budget <= 1.0:
            raise ValueError(f"a fraction budget must lie in (0, 1], got {budget}.")
        wanted = _round_half_up(budget * num_patients)
    else:
        raise ValueError(f"per-class budgets are in patients_per_class or fraction, got unit {unit!r}.")
    return min(max(wanted, 1), num_patients)


def _whole_count(budget: float, available: int, noun: str) -> int:
    """``budget`` as a count of ``noun``s; a ValueError unless it is a whole number from 1 to ``available``."""
    if int(budget) != budget or not 1 <= budget <= available:
        raise ValueError(f"a {noun} budget must be a whole number from 1 to {available}, got {budget}.")
    return int(budget)


def volume_splits(images: Sequence[str], budgets: Sequence[int], seed: int) -> dict[str, list[str]]:
    """Budget -> the first ``budget`` volumes of one permutation of ``images`` by ``default_rng(seed)``.

    The budgets are nested: every smaller budget's volumes are a prefix of every larger one's.

    Raises:
        ValueError: a budget is not a whole number from 1 to ``len(images)``.
    """
    counts = {budget_key(b): _whole_count(b, len(images), "volume") for b in budgets}
    order = [images[i] for i in np.random.default_rng(seed).permutation(len(images))]
    return {key: order[:count] for key, count in counts.items()}


def _patients_by_class(entries: Sequence[dict[str, Any]]) -> dict[int, list[str]]:
    """Class -> sorted patient ids (``patient`` field, or the image when absent); a patient has one class."""
    classes: dict[str, int] = {}
    for entry in entries:
        patient = str(entry.get("patient", entry["image"]))
        if classes.setdefault(patient, entry["label"]) != entry["label"]:
            raise ValueError(f"patient {patient} has scans of two classes ({classes[patient]}, {entry['label']}).")
    grouped: dict[int, list[str]] = {}
    for patient, label in sorted(classes.items()):
        grouped.setdefault(label, []).append(patient)
    return dict(sorted(grouped.items()))


def _unstratified_count(budget: float, num_patients: int, num_classes: int, unit: str) -> int:
    """Patients of an unstratified budget: ``budget`` × ``num_classes`` (patients_per_class) or the fraction."""
    if unit == "patients_per_class":
        return min(max(int(budget), 1) * num_classes, num_patients)
    return per_class_count(budget, num_patients, unit)


def _images_of(entries: Sequence[dict[str, Any]], patients: set[str]) -> list[str]:
    """The images of ``patients``, in datalist order."""
    return [e["image"] for e in entries if str(e.get("patient", e["image"])) in patients]


def patient_splits(
    entries: Sequence[dict[str, Any]],
    budgets: Sequence[float],
    unit: str,
    seed: int,
    stratify: bool = True,
    max_redraws: int = 1000,
) -> tuple[dict[str, list[str]], int]:
    """Budget -> the images of the patients labelled at that budget, and the number of redraws.

    Args:
        entries: pool entries ``{"image", "label", "patient"?}`` (all scans of a patient go together).
        budgets: patients per class, or fractions of the patients (of each class when stratified).
        unit: ``patients_per_class`` or ``fraction``.
        seed: seed of ``numpy.random.default_rng``.
        stratify: one permutation per class (classes in increasing order, patients sorted before
            permuting); budget b takes the first :func:`per_class_count` patients of each class, so no class
            can be missing. Otherwise one permutation of all patients and budget b takes the first
            b × (number of classes) of them (or the fraction b, at least one); when a budget's patients
            miss a class of the pool, the whole permutation is drawn again from the same generator (so the
            budgets stay nested).
        max_redraws: give up after this many redraws.

    Returns:
        ``({budget_key: [image, ...]}, redraws)``; every smaller budget's images are among every larger one's.
    """
    grouped = _patients_by_class(entries)
    rng = np.random.default_rng(seed)
    if stratify:
        orders = {label: [patients[i] for i in rng.permutation(len(patients))] for label, patients in grouped.items()}
        chosen = {
            budget_key(b): {p for label, order in orders.items() for p in order[: per_class_count(b, len(order), unit)]}
            for b in budgets
        }
        return {key: _images_of(entries, patients) for key, patients in chosen.items()}, 0
    patients = sorted(p for members in grouped.values() for p in members)
    label_of = {p: label for label, members in grouped.items() for p in members}
    for redraws in range(max_redraws + 1):
        order = [patients[i] for i in rng.permutation(len(patients))]
        counts = {budget_key(b): _unstratified_count(b, len(order), len(grouped), unit) for b in budgets}
        if all({label_of[p] for p in order[:count]} == set(grouped) for count in counts.values()):
            return {key: _images_of(entries, set(order[:count])) for key, count in counts.items()}, redraws
    raise ValueError(f"no permutation in {max_redraws} redraws gives every budget all {len(grouped)} classes.")


def patient_sample_splits(
    entries: Sequence[dict[str, Any]], budgets: Sequence[float], unit: str, seed: int
) -> dict[str, list[str]]:
    """Budget -> the images of the first patients of one permutation of the patients (multi-label data, where a
    patient has no single class to stratify by).

    Args:
        entries: pool entries ``{"image", "patient"?, ...}``; a patient's images go together (the image is its
            own patient when ``patient`` is absent).
        budgets: whole numbers of patients (``patients``, from 1 to the number of patients) or fractions of the
            patients in (0, 1] (``fraction``: rounded half up, at least one patient).
        unit: ``patients`` or ``fraction``.
        seed: seed of ``numpy.random.default_rng``; the patients are sorted before the permutation.

    Returns:
        ``{budget_key: [image, ...]}`` in datalist order; every smaller budget's images are among every larger one's.
    """
    patients = sorted({str(e.get("patient", e["image"])) for e in entries})
    counts = {}
    for budget in budgets:
        if unit == "patients":
            counts[budget_key(budget)] = _whole_count(budget, len(patients), "patient")
        elif unit == "fraction":
            counts[budget_key(budget)] = per_class_count(budget, len(patients), unit)
        else:
            raise ValueError(f"patient budgets are in patients or fraction, got unit {unit!r}.")
    order = [patients[i] for i in np.random.default_rng(seed).permutation(len(patients))]
    return {key: _images_of(entries, set(order[:count])) for key, count in counts.items()}


def splits_text(content: dict[str, Any]) -> str:
    """Canonical JSON text of ``content`` (sorted keys, 2-space indent, trailing newline): same content, same bytes."""
    return json.dumps(content, indent=2, sort_keys=True) + "\n"


def splits_hash(content: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON text of ``content`` (without any ``sha256`` entry)."""
    body = {k: v for k, v in content.items() if k != "sha256"}
    return hashlib.sha256(splits_text(body).encode()).hexdigest()
