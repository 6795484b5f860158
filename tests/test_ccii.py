"""Tests of voco_components.apps.ccii: CC-CCII slice folders to NIfTI volumes and a patient-wise k-fold datalist.

A fake release is written with PIL. Each gray pixel encodes its position, ``value = 48 * z + 8 * row + col``
for slices of 8 x 6 pixels (width x height) and z the slice's rank in numeric name order, so the expected
voxel at (x, y, z) is known without the converter: ``48 * z + 8 * y + x``.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from voco_components.apps.ccii import CLASS_NAMES, convert_dataset, convert_scan, find_scans
from voco_components.data.folds import fold_split

REPO = Path(__file__).resolve().parents[1]
WIDTH, HEIGHT = 8, 6
LABELS = {"NCP": 0, "CP": 1, "Normal": 2}

# (class, patient, scan, slice numbers in the file names, how the slices are stored)
TREE = [
    ("NCP", "1", "1", [0, 1, 2, 10], "gray"),  # numeric order 0, 1, 2, 10 (text order would be 0, 1, 10, 2)
    ("NCP", "1", "2", [0, 1, 2], "gray_padded"),  # 0000.png, 0001.png, 0002.png
    ("NCP", "7", "3", [0, 1, 2, 3, 4], "gray_rgb"),  # RGB png with R = G = B: luminance is exact
    ("NCP", "12", "4", [5, 6, 7], "gray"),
    ("NCP", "20", "13", [3, 9], "gray"),
    ("CP", "2", "5", [0, 1, 2, 3], "jpg"),  # RGB jpeg of the gray pattern: lossy
    ("CP", "3", "6", [1, 2, 3], "gray"),
    ("CP", "3", "7", [0, 1, 2, 11, 12], "gray"),
    ("CP", "11", "8", [0, 1, 2], "color"),  # RGB png in colour: luminance R*0.299 + G*0.587 + B*0.114
    ("Normal", "4", "9", [0, 1, 2], "gray"),
    ("Normal", "5", "10", [2, 4, 8], "gray"),
    ("Normal", "5", "11", [0, 1, 2, 3], "gray"),
    ("Normal", "6", "12", [0, 10, 20, 100], "gray"),
]


def gray_slice(z: int) -> np.ndarray:
    """(rows, columns) uint8 slice whose pixel (row, col) is 48 * z + 8 * row + col."""
    rows, cols = np.meshgrid(np.arange(HEIGHT), np.arange(WIDTH), indexing="ij")
    return (48 * z + 8 * rows + cols).astype(np.uint8)


def color_slice(z: int) -> np.ndarray:
    """(rows, columns, 3) uint8 RGB slice with different R, G and B."""
    gray = gray_slice(z).astype(np.int64)
    return np.stack([gray, 255 - gray, (gray * 7 + 30) % 256], axis=-1).astype(np.uint8)


def expected_volume(numbers: list[int], kind: str) -> np.ndarray:
    """The (X, Y, Z) volume expected for a TREE scan, built voxel by voxel from the slice formulas."""
    volume = np.zeros((WIDTH, HEIGHT, len(numbers)), dtype=np.float64)
    for z in range(len(numbers)):
        for y in range(HEIGHT):
            for x in range(WIDTH):
                if kind == "color":
                    r, g, b = (int(c) for c in color_slice(z)[y, x])
                    volume[x, y, z] = 0.299 * r + 0.587 * g + 0.114 * b
                else:
                    volume[x, y, z] = 48 * z + 8 * y + x
    return volume


def write_scan(folder: Path, numbers: list[int], kind: str) -> None:
    folder.mkdir(parents=True)
    for z, number in sorted(enumerate(numbers), key=lambda item: str(item[1])):  # write in text order
        if kind == "color":
            Image.fromarray(color_slice(z), mode="RGB").save(folder / f"{number}.png")
        elif kind == "gray_rgb":
            Image.fromarray(np.repeat(gray_slice(z)[..., None], 3, axis=-1), mode="RGB").save(folder / f"{number}.png")
        elif kind == "jpg":
            rgb = np.repeat(gray_slice(z)[..., None], 3, axis=-1)
            Image.fromarray(rgb, mode="RGB").save(folder / f"{number}.jpg", quality=95)
        elif kind == "gray_padded":
            Image.fromarray(gray_slice(z), mode="L").save(folder / f"{number:04d}.png")
        else:
            Image.fromarray(gray_slice(z), mode="L").save(folder / f"{number}.png")


def scan_folder(root: Path, class_name: str, patient: str, scan: str) -> Path:
    return root / class_name / patient / scan


@pytest.fixture(scope="module")
def release(tmp_path_factory) -> Path:
    """A fake CC-CCII release built from TREE, with stray files that the converter must ignore."""
    root = tmp_path_factory.mktemp("ccii") / "release"
    for class_name, patient, scan, numbers, kind in TREE:
        write_scan(scan_folder(root, class_name, patient, scan), numbers, kind)
    (scan_folder(root, "NCP", "1", "1") / "Thumbs.db").write_bytes(b"\x00junk")
    (scan_folder(root, "CP", "3", "6") / "notes.txt").write_text("not a slice")
    (scan_folder(root, "CP", "3", "6") / "._1.png").write_bytes(b"AppleDouble junk")  # hidden: skipped
    (root / "Normal" / ".DS_Store").write_bytes(b"junk")
    (root / "README.txt").write_text("released data")
    return root


@pytest.fixture(scope="module")
def converted(release, tmp_path_factory) -> Path:
    """The datalist of ``release`` converted with the defaults (3 folds, seed 0)."""
    return convert_dataset(release, tmp_path_factory.mktemp("converted"))


def load(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def fold_of_patients(datalist: dict, num_folds: int = 3) -> dict[tuple[int, str], int]:
    return {(e["label"], e["patient"]): i for i in range(num_folds) for e in datalist[f"fold{i}"]}


# --------------------------------------------------------------------------------------------- find_scans


def test_find_scans_lists_every_scan_with_numeric_slice_order(release):
    scans = find_scans(release)
    got = {(s.class_name, s.patient_id, s.scan_id): s for s in scans}
    assert sorted(got) == sorted((c, p, s) for c, p, s, _, _ in TREE)
    assert len(scans) == len(TREE)
    for class_name, patient, scan_id, numbers, kind in TREE:
        scan = got[(class_name, patient, scan_id)]
        assert scan.label == LABELS[class_name]
        assert scan.folder == scan_folder(release, class_name, patient, scan_id)
        suffix = ".jpg" if kind == "jpg" else ".png"
        names = [f"{n:04d}{suffix}" if kind == "gray_padded" else f"{n}{suffix}" for n in sorted(numbers)]
        assert [p.name for p in scan.slice_files] == names
    assert [p.name for p in got[("NCP", "1", "1")].slice_files] == ["0.png", "1.png", "2.png", "10.png"]
    assert [s.label for s in scans] == sorted(s.label for s in scans)  # grouped by class in label order
    with pytest.raises(AttributeError):
        scans[0].label = 5  # frozen


def test_class_names_and_labels():
    assert CLASS_NAMES == ("NCP", "CP", "Normal")
    assert {name: CLASS_NAMES.index(name) for name in CLASS_NAMES} == LABELS


# --------------------------------------------------------------------------------------------- convert_scan


@pytest.mark.parametrize("key", [("NCP", "1", "1"), ("NCP", "1", "2"), ("CP", "3", "7"), ("Normal", "6", "12")])
def test_convert_scan_voxels_follow_slice_rows_columns_and_numeric_order(release, tmp_path, key):
    numbers, kind = next((n, k) for c, p, s, n, k in TREE if (c, p, s) == key)
    scan = next(s for s in find_scans(release) if (s.class_name, s.patient_id, s.scan_id) == key)
    shape = convert_scan(scan, tmp_path / "v.nii.gz")
    volume = np.asanyarray(nib.load(tmp_path / "v.nii.gz").dataobj)
    assert shape == volume.shape == (WIDTH, HEIGHT, len(numbers))
    assert volume.dtype == np.uint8
    np.testing.assert_array_equal(volume, expected_volume(numbers, kind))
    # a few voxels by hand: (x, y, z) is the pixel at row y, column x of the z-th slice
    assert volume[7, 0, 0] == 7
    assert volume[0, 5, 0] == 40
    assert volume[3, 2, 1] == 48 + 16 + 3
    assert volume[7, 5, len(numbers) - 1] == 48 * (len(numbers) - 1) + 47


def test_convert_scan_writes_spacing_into_affine_and_header(release, tmp_path):
    scan = find_scans(release)[0]
    convert_scan(scan, tmp_path / "a.nii.gz", spacing=(0.7, 0.8, 2.5))
    image = nib.load(tmp_path / "a.nii.gz")
    np.testing.assert_allclose(image.affine, np.diag([0.7, 0.8, 2.5, 1.0]), atol=1e-6)
    np.testing.assert_allclose(image.header.get_zooms(), (0.7, 0.8, 2.5), atol=1e-6)
    convert_scan(scan, tmp_path / "b.nii.gz")
    np.testing.assert_allclose(nib.load(tmp_path / "b.nii.gz").affine, np.eye(4), atol=1e-6)
    with pytest.raises(ValueError, match="spacing"):
        convert_scan(scan, tmp_path / "c.nii.gz", spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match=r"\.nii"):
        convert_scan(scan, tmp_path / "c.png")


@pytest.mark.parametrize(
    ("key", "tolerance"),
    [(("NCP", "7", "3"), 0), (("CP", "11", "8"), 1), (("CP", "2", "5"), 2)],
    ids=["rgb-png-gray", "rgb-png-colour", "rgb-jpg"],
)
def test_rgb_slices_become_luminance(release, tmp_path, key, tolerance):
    numbers, kind = next((n, k) for c, p, s, n, k in TREE if (c, p, s) == key)
    scan = next(s for s in find_scans(release) if (s.class_name, s.patient_id, s.scan_id) == key)
    convert_scan(scan, tmp_path / "v.nii.gz")
    volume = np.asanyarray(nib.load(tmp_path / "v.nii.gz").dataobj).astype(np.float64)
    expected = expected_volume(numbers, kind)
    assert volume.shape == expected.shape
    assert np.abs(volume - expected).max() <= tolerance + 0.5  # +0.5: the float formula vs integer pixels


def test_convert_scan_rejects_slices_of_different_sizes(tmp_path):
    folder = tmp_path / "release" / "CP" / "8" / "30"
    folder.mkdir(parents=True)
    Image.fromarray(gray_slice(0), mode="L").save(folder / "0.png")
    Image.fromarray(np.zeros((HEIGHT, WIDTH + 1), np.uint8), mode="L").save(folder / "1.png")
    (scan,) = find_scans(tmp_path / "release")
    with pytest.raises(ValueError, match=re.escape(str(folder))) as info:
        convert_scan(scan, tmp_path / "out" / "v.nii.gz")
    assert "8x6" in str(info.value) and "9x6" in str(info.value)
    assert not (tmp_path / "out" / "v.nii.gz").exists()


def test_unreadable_or_16_bit_slices_are_errors_naming_the_file(tmp_path):
    make_release(tmp_path / "r", [("NCP", "1", "1"), ("CP", "2", "2")])
    deep = scan_folder(tmp_path / "r", "NCP", "1", "1") / "1.png"
    Image.fromarray(np.full((HEIGHT, WIDTH), 4000, np.uint16)).save(deep)  # 16-bit: would be clipped
    broken = scan_folder(tmp_path / "r", "CP", "2", "2") / "1.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    first, second = find_scans(tmp_path / "r")
    with pytest.raises(ValueError, match=re.escape(str(deep)) + ".*not 8-bit"):
        convert_scan(first, tmp_path / "a.nii.gz")
    with pytest.raises(ValueError, match=re.escape(str(broken)) + ".*cannot read"):
        convert_scan(second, tmp_path / "b.nii.gz")


def test_failed_write_leaves_no_partial_volume(release, tmp_path, monkeypatch):
    scan = find_scans(release)[0]
    target = tmp_path / "v.nii.gz"
    target.write_bytes(b"previous complete volume")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr("voco_components.utils.os.fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        convert_scan(scan, target)
    assert target.read_bytes() == b"previous complete volume"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.nii.gz"]  # no temporary file left
    monkeypatch.undo()
    convert_scan(scan, target)
    assert nib.load(target).shape == (WIDTH, HEIGHT, 4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.nii.gz"]


# --------------------------------------------------------------------------------------------- errors of find_scans


def make_release(root: Path, scans: list[tuple[str, str, str]]) -> None:
    for class_name, patient, scan in scans:
        write_scan(scan_folder(root, class_name, patient, scan), [0, 1], "gray")


def test_empty_scan_folder_is_an_error_naming_it(tmp_path):
    make_release(tmp_path, [("NCP", "1", "1")])
    empty = scan_folder(tmp_path, "CP", "2", "2")
    empty.mkdir(parents=True)
    (empty / "Thumbs.db").write_bytes(b"junk")  # not a slice either
    with pytest.raises(ValueError, match=re.escape(str(empty)) + ".*no slice images"):
        find_scans(tmp_path)


def test_non_integer_slice_name_is_an_error_naming_the_folder(tmp_path):
    make_release(tmp_path, [("NCP", "1", "1"), ("Normal", "3", "4")])
    folder = scan_folder(tmp_path, "Normal", "3", "4")
    Image.fromarray(gray_slice(2), mode="L").save(folder / "slice_2.png")
    with pytest.raises(ValueError, match=re.escape(str(folder)) + ".*slice_2.png"):
        find_scans(tmp_path)


def test_duplicate_slice_numbers_are_an_error_naming_the_folder(tmp_path):
    make_release(tmp_path, [("CP", "1", "1")])
    folder = scan_folder(tmp_path, "CP", "1", "1")
    Image.fromarray(gray_slice(2), mode="L").save(folder / "001.png")  # same number as 1.png
    with pytest.raises(ValueError, match=re.escape(str(folder)) + ".*same number 1"):
        find_scans(tmp_path)


def test_missing_class_folders_is_an_error_naming_the_root(tmp_path):
    make_release(tmp_path / "outer", [("NCP", "1", "1")])  # one level too high
    with pytest.raises(FileNotFoundError, match=re.escape(str(tmp_path)) + ".*NCP, CP, Normal") as info:
        find_scans(tmp_path)
    assert "outer" in str(info.value)
    with pytest.raises(FileNotFoundError, match="not found"):
        find_scans(tmp_path / "nowhere")


def test_patient_folder_without_scan_folders_is_an_error(tmp_path):
    make_release(tmp_path, [("NCP", "1", "1")])
    patient = tmp_path / "CP" / "5"
    patient.mkdir(parents=True)
    Image.fromarray(gray_slice(0), mode="L").save(patient / "0.png")  # slices one level too high
    with pytest.raises(ValueError, match=re.escape(str(patient)) + ".*no scan folders"):
        find_scans(tmp_path)


# --------------------------------------------------------------------------------------------- convert_dataset


def test_datalist_lists_every_scan_once_with_its_label(release, converted):
    datalist = load(converted)
    expected = sorted((f"images/{c}_{p}_{s}.nii.gz", LABELS[c], p) for c, p, s, _, _ in TREE)
    training = sorted((e["image"], e["label"], e["patient"]) for e in datalist["training"])
    assert training == expected
    in_folds = sorted((e["image"], e["label"], e["patient"]) for i in range(3) for e in datalist[f"fold{i}"])
    assert in_folds == expected
    assert {k for k in datalist if k.startswith("fold")} == {"fold0", "fold1", "fold2"}
    assert datalist["labels"] == {"0": "NCP", "1": "CP", "2": "Normal"}
    for image, _, _ in expected:
        assert (converted.parent / image).is_file()
    numbers = {f"{c}_{p}_{s}": n for c, p, s, n, _ in TREE}
    for entry in datalist["training"]:
        name = Path(entry["image"]).name.removesuffix(".nii.gz")
        assert nib.load(converted.parent / entry["image"]).shape == (WIDTH, HEIGHT, len(numbers[name]))


def test_folds_are_patient_disjoint_non_empty_and_class_balanced(converted):
    datalist = load(converted)
    seen: dict[tuple[int, str], set[int]] = defaultdict(set)
    for i in range(3):
        assert datalist[f"fold{i}"], f"fold{i} is empty"
        for entry in datalist[f"fold{i}"]:
            seen[(entry["label"], entry["patient"])].add(i)
    assert all(len(folds) == 1 for folds in seen.values()), seen
    patients_per_class = Counter(c for c, _ in {(c, p) for c, p, *_ in TREE})
    assert len(seen) == sum(patients_per_class.values()) == 10
    for class_name, total in patients_per_class.items():
        counts = [sum(1 for (label, _), f in seen.items() if label == LABELS[class_name] and i in f) for i in range(3)]
        assert sum(counts) == total
        assert max(counts) - min(counts) <= 1, (class_name, counts)
    fold_sizes = [sum(1 for f in seen.values() if i in f) for i in range(3)]
    assert sorted(fold_sizes) == [3, 3, 4]


def test_fold_sizes_stay_within_one_patient_across_classes(tmp_path):
    # 4 + 4 + 1 patients in 3 folds: dealing each class from fold0 again would give fold sizes 5, 2, 2
    make_release(
        tmp_path / "r", [(c, f"{c}{i}", "1") for c, n in (("NCP", 4), ("CP", 4), ("Normal", 1)) for i in range(n)]
    )
    folds = fold_of_patients(load(convert_dataset(tmp_path / "r", tmp_path / "out", seed=5)))
    assert sorted(Counter(folds.values()).values()) == [3, 3, 3]
    for label in (0, 1):
        assert sorted(Counter(f for (lab, _), f in folds.items() if lab == label).values()) == [1, 1, 2]


def test_split_is_deterministic_for_a_seed_and_changes_with_it(release, converted, tmp_path):
    again = convert_dataset(release, tmp_path / "again", seed=0)
    assert again.read_text() == converted.read_text()
    splits = {
        seed: fold_of_patients(load(convert_dataset(release, tmp_path / f"s{seed}", seed=seed))) for seed in (1, 2)
    }
    reference = fold_of_patients(load(converted))
    assert any(split != reference for split in splits.values())


def test_two_folds(release, tmp_path):
    datalist = load(convert_dataset(release, tmp_path, num_folds=2, seed=3))
    assert {k for k in datalist if k.startswith("fold")} == {"fold0", "fold1"}
    folds = fold_of_patients(datalist, 2)
    for label in LABELS.values():
        counts = Counter(f for (lab, _), f in folds.items() if lab == label)
        assert abs(counts[0] - counts[1]) <= 1


def test_bad_fold_counts_are_errors(release, tmp_path):
    with pytest.raises(ValueError, match="num_folds"):
        convert_dataset(release, tmp_path, num_folds=1)
    with pytest.raises(ValueError, match="10 patients cannot fill 11 folds"):
        convert_dataset(release, tmp_path, num_folds=11)
    assert not (tmp_path / "datalist.json").exists()


def test_fold_split(converted):
    datalist = load(converted)
    for fold in range(3):
        train, val = fold_split(converted, fold)
        assert val == datalist[f"fold{fold}"]
        assert train == [e for i in range(3) if i != fold for e in datalist[f"fold{i}"]]
        assert not {e["image"] for e in train} & {e["image"] for e in val}
        assert not {(e["label"], e["patient"]) for e in train} & {(e["label"], e["patient"]) for e in val}
    with pytest.raises(ValueError, match="from 0 to 2"):
        fold_split(converted, 3)
    with pytest.raises(FileNotFoundError):
        fold_split(converted.parent / "missing.json", 0)


def test_skip_existing_keeps_volumes_and_overwrite_replaces_them(release, tmp_path):
    convert_dataset(release, tmp_path)
    volume = tmp_path / "images" / "NCP_1_1.nii.gz"
    old = 1_000_000_000_000_000_000  # 2001, in ns: any rewrite would change it
    os.utime(volume, ns=(old, old))
    content = volume.read_bytes()
    (tmp_path / "images" / "Normal_6_12.nii.gz").unlink()  # a missing volume is converted again
    convert_dataset(release, tmp_path, skip_existing=True)
    assert volume.stat().st_mtime_ns == old
    assert volume.read_bytes() == content
    assert (tmp_path / "images" / "Normal_6_12.nii.gz").is_file()
    convert_dataset(release, tmp_path, skip_existing=False)
    assert volume.stat().st_mtime_ns != old
    np.testing.assert_array_equal(np.asanyarray(nib.load(volume).dataobj), expected_volume([0, 1, 2, 10], "gray"))


def test_command_line(release, converted, tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "voco_components.apps.ccii",
            str(release),
            str(tmp_path),
            "--num_folds",
            "3",
            "--seed",
            "0",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "datalist.json").read_text() == converted.read_text()
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("class"))
    assert header.split() == ["class", "fold0", "fold1", "fold2", "total"]
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.split() and line.split()[0] in (*LABELS, "all")}
    assert rows["NCP"][-2:] == ["5", "(4)"]  # total: 5 scans of 4 patients
    assert rows["CP"][-2:] == ["4", "(3)"]
    assert rows["Normal"][-2:] == ["4", "(3)"]
    assert rows["all"][-2:] == ["13", "(10)"]

    bad = subprocess.run(
        [sys.executable, "-m", "voco_components.apps.ccii", str(tmp_path / "nowhere"), str(tmp_path / "out")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert bad.returncode == 1
    assert "nowhere" in bad.stderr
