"""NIH ChestX-ray14 to decathlon-style datalists: pretraining, fine-tuning (training, validation) and official test.

The release as users download it (NIH Clinical Center, https://nihcc.app.box.com/v/ChestXray-NIHCC) holds::

    <root>/Data_Entry_2017.csv        Image Index, Finding Labels, Follow-up #, Patient ID, ..., View Position, ...
    <root>/train_val_list.txt         one image name per line (86,524 images)
    <root>/test_list.txt              one image name per line (25,596 images)
    <root>/images_001/images/*.png    the 112,120 radiographs, 1024x1024 8-bit (``images*/`` folders, any depth)

``Finding Labels`` is ``No Finding`` or a ``|``-separated list of the 14 findings of :data:`FINDINGS`
(``Cardiomegaly|Emphysema``). :func:`convert_release` writes two datalists into ``output_dir``:

- ``datalist.json`` for fine-tuning: ``training`` and ``validation`` (the fine-tuning patients, split by
  patient) and ``testing`` (the official test list); each entry ``{"image", "label", "patient", "view"}``
  with ``label`` a list of 14 zeros and ones in :data:`FINDINGS` order;
- ``pretraining.json`` for VoCo: ``training`` (the pretraining patients' images, no labels) and
  ``validation`` (up to ``pretrain_val_images`` images of the fine-tuning validation patients, for the
  held-out position metrics; never pretrained on).

The official train-val patients are shuffled with ``seed`` and cut by patient: ``pretrain_fraction`` (60 %,
the paper's and PCRLv2's setting) for pretraining, the rest for fine-tuning, of which ``val_fraction`` of
the patients validate. No patient is in two parts: a patient of the test list whose other images are in
the train-val list loses those images (the official test list wins). ``views`` keeps only PA or AP
radiographs, in every part. The split depends only on the patient ids, the lists and ``seed``.
PCRLv2's published lists use their validation list as the test list; these keep the two apart.

Command line::

    python -m voco_components.apps.cxr14 ROOT [--output_dir DIR] [--pretrain_fraction 0.6] [--val_fraction 0.1]
        [--views PA AP] [--seed 0]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import random
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from voco_components.utils import atomic_save_text

__all__ = [
    "FINDINGS",
    "NO_FINDING",
    "VIEWS",
    "CSV_NAME",
    "TRAIN_VAL_LIST",
    "TEST_LIST",
    "REQUIRED_COLUMNS",
    "Record",
    "read_data_entry",
    "read_image_list",
    "find_images",
    "split_patients",
    "convert_release",
    "format_summary",
    "main",
]

logger = logging.getLogger(__name__)

FINDINGS: tuple[str, ...] = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
"""The 14 findings of ChestX-ray14 in the order of the labels (Wang et al. 2017; as the release spells them)."""
NO_FINDING = "No Finding"
VIEWS = ("PA", "AP")
CSV_NAME = "Data_Entry_2017.csv"
TRAIN_VAL_LIST = "train_val_list.txt"
TEST_LIST = "test_list.txt"
REQUIRED_COLUMNS = ("Image Index", "Finding Labels", "Patient ID", "View Position")
IMAGE_FOLDERS = "images*"


@dataclass(frozen=True)
class Record:
    """One row of ``Data_Entry_2017.csv``.

    Attributes:
        image: the ``Image Index`` (file name, e.g. ``00000001_000.png``).
        label: 0/1 per finding of :data:`FINDINGS`.
        patient: the ``Patient ID``.
        view: the ``View Position`` (``PA`` or ``AP``).
    """

    image: str
    label: tuple[int, ...]
    patient: str
    view: str


def _parse_findings(text: str, where: str) -> tuple[int, ...]:
    """``Finding Labels`` -> 0/1 per finding; ``No Finding`` alone is all zeros."""
    names = [name.strip() for name in text.split("|")]
    if names == [NO_FINDING]:
        return (0,) * len(FINDINGS)
    unknown = [name for name in names if name not in FINDINGS]
    if unknown:
        raise ValueError(
            f"{where}: unknown finding(s) {unknown} in {text!r}; expected '{NO_FINDING}' or '|'-separated names "
            f"of {', '.join(FINDINGS)}."
        )
    return tuple(int(name in names) for name in FINDINGS)


def read_data_entry(path: str | Path) -> list[Record]:
    """The rows of ``Data_Entry_2017.csv`` (or a file with the same columns), in file order.

    Columns other than :data:`REQUIRED_COLUMNS` are ignored (the release's header splits
    ``OriginalImage[Width,Height]`` over two columns and ends with a comma; both read fine).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a required column is missing, a finding is unknown, ``No Finding`` is combined with a
            finding, a view is neither PA nor AP, a field is empty, or an image is listed twice; the
            message names the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {CSV_NAME} not found; point ROOT at the unpacked ChestX-ray14 release.")
    records: list[Record] = []
    seen: dict[str, int] = {}
    with open(path, newline="", encoding="utf-8-sig") as handle:
        reader = csv.DictReader(handle)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing column(s) {missing}; found {reader.fieldnames}.")
        for row in reader:
            where = f"{path}, line {reader.line_num}"
            values = {c: (row[c] or "").strip() for c in REQUIRED_COLUMNS}
            empty = [c for c, v in values.items() if not v]
            if empty:
                raise ValueError(f"{where}: empty {empty}.")
            view = values["View Position"]
            if view not in VIEWS:
                raise ValueError(f"{where}: View Position {view!r} is neither of {VIEWS}.")
            image = values["Image Index"]
            if image in seen:
                raise ValueError(f"{where}: image {image} is listed again (first on line {seen[image]}).")
            seen[image] = reader.line_num
            records.append(Record(image, _parse_findings(values["Finding Labels"], where), values["Patient ID"], view))
    return records


def read_image_list(path: str | Path) -> list[str]:
    """The image names of ``train_val_list.txt`` or ``test_list.txt``, one per line (blank lines skipped).

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: a name is listed twice (naming the file and line).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: image list not found (the release's {TRAIN_VAL_LIST} and {TEST_LIST}).")
    names: list[str] = []
    seen: dict[str, int] = {}
    for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
        name = line.strip()
        if not name:
            continue
        if name in seen:
            raise ValueError(f"{path}, line {number}: {name} is listed again (first on line {seen[name]}).")
        seen[name] = number
        names.append(name)
    return names


def find_images(root: str | Path) -> dict[str, str]:
    """File name -> path relative to ``root`` of every image in the ``images*/`` folders (any depth).

    Raises:
        ValueError: two files of the same name (naming both).
    """
    root = Path(root)
    found: dict[str, str] = {}
    for folder in sorted(p for p in root.glob(IMAGE_FOLDERS) if p.is_dir()):
        for path in sorted(folder.rglob("*")):
            if not path.is_file() or path.name.startswith("."):
                continue
            relative = path.relative_to(root).as_posix()
            if path.name in found:
                raise ValueError(f"{root}: {found[path.name]} and {relative} have the same name.")
            found[path.name] = relative
    return found


def _patient_key(patient: str) -> tuple[int, int, str]:
    """Numeric ids in numeric order, before any others (in text order)."""
    return (0, int(patient), patient) if patient.isdigit() else (1, 0, patient)


def split_patients(
    patients: Sequence[str], pretrain_fraction: float, val_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Cut patients into ``pretraining``, ``training`` and ``validation`` (sorted within each part).

    The sorted ids are shuffled with ``random.Random(seed)``; the first ``round(pretrain_fraction * N)``
    pretrain, and of the other M, the first ``round(val_fraction * M)`` validate.
    """
    ordered = sorted(set(patients), key=_patient_key)
    random.Random(seed).shuffle(ordered)
    cut = round(pretrain_fraction * len(ordered))
    rest = ordered[cut:]
    val = round(val_fraction * len(rest))
    parts = {"pretraining": ordered[:cut], "validation": rest[:val], "training": rest[val:]}
    return {name: sorted(ids, key=_patient_key) for name, ids in parts.items()}


def _check_fraction(value: float, name: str, allow_zero: bool) -> float:
    value = float(value)
    if not ((0.0 <= value if allow_zero else 0.0 < value) and value < 1.0):
        raise ValueError(f"{name} must lie in {'[0' if allow_zero else '(0'}, 1), got {value}.")
    return value


def _entry(record: Record, path: str, labelled: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"image": path}
    if labelled:
        entry["label"] = list(record.label)
    entry.update(patient=record.patient, view=record.view)
    return entry


def convert_release(
    root: str | Path,
    output_dir: str | Path | None = None,
    pretrain_fraction: float = 0.6,
    val_fraction: float = 0.1,
    views: Sequence[str] = VIEWS,
    seed: int = 0,
    pretrain_val_images: int = 256,
    check_images: bool = True,
) -> tuple[Path, Path]:
    """Write ``datalist.json`` and ``pretraining.json`` for the release in ``root`` (see the module docstring).

    Image paths in the datalists are relative to ``root`` (the bundles' ``dataset_dir``): where the
    ``images*/`` folders hold the file, or ``images/<name>`` when ``check_images`` is False.

    Args:
        root: the unpacked release.
        output_dir: where the two datalists go; ``root`` when None.
        pretrain_fraction: fraction of the train-val patients that pretrain (0.6 in the paper).
        val_fraction: fraction of the other (fine-tuning) patients that validate.
        views: the view positions kept (``PA``, ``AP`` or both), in every part.
        seed: seed of the patient shuffle.
        pretrain_val_images: most images of the fine-tuning validation patients in ``pretraining.json``'s
            ``validation`` list (evenly spaced over them).
        check_images: find every listed image under ``images*/`` and refuse missing ones.

    Returns:
        the paths of ``datalist.json`` and ``pretraining.json``.

    Raises:
        FileNotFoundError, ValueError: from the readers; ValueError also for a list naming an image that is
            not in the CSV or a missing image file (the first ones named), a view other than PA/AP, or
            fractions outside their range.
    """
    root = Path(root)
    output_dir = root if output_dir is None else Path(output_dir)
    pretrain_fraction = _check_fraction(pretrain_fraction, "pretrain_fraction", allow_zero=False)
    val_fraction = _check_fraction(val_fraction, "val_fraction", allow_zero=True)
    views = tuple(views)
    if not views or any(v not in VIEWS for v in views):
        raise ValueError(f"views must be some of {VIEWS}, got {views}.")
    records = {r.image: r for r in read_data_entry(root / CSV_NAME)}
    lists = {name: read_image_list(root / name) for name in (TRAIN_VAL_LIST, TEST_LIST)}
    for name, images in lists.items():
        unknown = [image for image in images if image not in records]
        if unknown:
            raise ValueError(f"{root / name}: {len(unknown)} images are not in {CSV_NAME}, e.g. {unknown[:5]}.")
    both = sorted(set(lists[TRAIN_VAL_LIST]) & set(lists[TEST_LIST]))
    if both:
        raise ValueError(f"{root}: {len(both)} images are in both {TRAIN_VAL_LIST} and {TEST_LIST}, e.g. {both[:5]}.")
    test = [records[i] for i in lists[TEST_LIST] if records[i].view in views]
    test_patients = {r.patient for r in test}
    train_val = [records[i] for i in lists[TRAIN_VAL_LIST] if records[i].view in views]
    leaking = [r for r in train_val if r.patient in test_patients]
    if leaking:
        logger.warning(
            "%d train-val images belong to %d patients of the test list and are left out (the official test "
            "list wins; no patient is in two parts).",
            len(leaking),
            len({r.patient for r in leaking}),
        )
    train_val = [r for r in train_val if r.patient not in test_patients]
    parts = split_patients([r.patient for r in train_val], pretrain_fraction, val_fraction, seed)
    part_of = {patient: part for part, patients in parts.items() for patient in patients}
    paths = find_images(root) if check_images else {}
    wanted = train_val + test
    if check_images:
        missing = [r.image for r in wanted if r.image not in paths]
        if missing:
            raise ValueError(
                f"{root}: {len(missing)} listed images are not in the {IMAGE_FOLDERS}/ folders, e.g. {missing[:5]}."
            )

    def path_of(record: Record) -> str:
        return paths.get(record.image, f"images/{record.image}")

    by_part: dict[str, list[Record]] = {"pretraining": [], "training": [], "validation": []}
    for record in train_val:
        by_part[part_of[record.patient]].append(record)
    settings = {
        "pretrain_fraction": pretrain_fraction,
        "val_fraction": val_fraction,
        "views": list(views),
        "seed": seed,
        "source": str(root.resolve()),
    }
    datalist = {
        "findings": list(FINDINGS),
        "settings": settings,
        "training": [_entry(r, path_of(r), True) for r in by_part["training"]],
        "validation": [_entry(r, path_of(r), True) for r in by_part["validation"]],
        "testing": [_entry(r, path_of(r), True) for r in test],
    }
    held_out = by_part["validation"]
    step = max(1, -(-len(held_out) // max(1, pretrain_val_images)))
    pretraining = {
        "settings": settings,
        "training": [_entry(r, path_of(r), False) for r in by_part["pretraining"]],
        "validation": [_entry(r, path_of(r), False) for r in held_out[::step][:pretrain_val_images]],
    }
    datalist_path, pretraining_path = output_dir / "datalist.json", output_dir / "pretraining.json"
    atomic_save_text(json.dumps(datalist, indent=1) + "\n", datalist_path)
    atomic_save_text(json.dumps(pretraining, indent=1) + "\n", pretraining_path)
    return datalist_path, pretraining_path


def format_summary(datalist_path: str | Path, pretraining_path: str | Path) -> str:
    """A text table of images, patients and positives per finding in each part."""
    datalist = json.loads(Path(datalist_path).read_text())
    pretraining = json.loads(Path(pretraining_path).read_text())
    parts = {
        "pretraining": pretraining["training"],
        **{name: datalist[name] for name in ("training", "validation", "testing")},
    }
    header = ["", *parts]
    rows = [header]
    rows.append(["images", *(str(len(entries)) for entries in parts.values())])
    rows.append(["patients", *(str(len({e["patient"] for e in entries})) for entries in parts.values())])
    for index, finding in enumerate(FINDINGS):
        cells = [finding]
        for name, entries in parts.items():
            cells.append("-" if name == "pretraining" else str(sum(e["label"][index] for e in entries)))
        rows.append(cells)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join([row[0].ljust(widths[0]), *(c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True))])
        for row in rows
    ]
    return "\n".join([*lines, "finding rows: images with the finding (pretraining uses no labels)"])


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: convert a ChestX-ray14 release and print the parts' sizes."""
    parser = argparse.ArgumentParser(
        prog="python -m voco_components.apps.cxr14",
        description="Write ChestX-ray14 datalists: datalist.json (fine-tuning training/validation by patient, the "
        "official test list as testing) and pretraining.json (the pretraining patients).",
    )
    parser.add_argument("root", help=f"the unpacked release: {CSV_NAME}, {TRAIN_VAL_LIST}, {TEST_LIST}, images*/")
    parser.add_argument("--output_dir", default=None, help="where the datalists go (default: ROOT)")
    parser.add_argument("--pretrain_fraction", type=float, default=0.6, help="train-val patients that pretrain")
    parser.add_argument("--val_fraction", type=float, default=0.1, help="fine-tuning patients that validate")
    parser.add_argument("--views", nargs="+", default=list(VIEWS), choices=VIEWS, help="view positions kept")
    parser.add_argument("--seed", type=int, default=0, help="seed of the patient shuffle")
    parser.add_argument("--pretrain_val_images", type=int, default=256, help="held-out images for pretraining")
    parser.add_argument("--no_image_check", action="store_true", help="do not look for the image files")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        paths = convert_release(
            args.root,
            args.output_dir,
            args.pretrain_fraction,
            args.val_fraction,
            args.views,
            args.seed,
            args.pretrain_val_images,
            check_images=not args.no_image_check,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {paths[0]} and {paths[1]}")
    print(format_summary(*paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
