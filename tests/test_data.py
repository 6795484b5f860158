"""Datalists as they come (voco_components.data): JSON files, folders, glob patterns and single volumes, merged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voco_components.data.datalists import load_datalists, volume_files
from voco_components.utils import volume_stem

VOLUMES = ("b.nii.gz", "a.nii", "c.nrrd", "d.mha", "1.3.6.1.4.1.mhd")
OTHERS = ("1.3.6.1.4.1.raw", "notes.txt", "datalist.json")


@pytest.fixture
def folder(tmp_path) -> Path:
    """A folder with one file of every volume kind, a MetaImage's raw part, other files and a sub-folder volume."""
    root = tmp_path / "ct"
    for name in (*VOLUMES, *OTHERS, "sub/e.nii.gz"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"")
    return root


def test_a_folder_gives_its_volumes_sorted_and_absolute(folder):
    expected = [str(folder / n) for n in ("1.3.6.1.4.1.mhd", "a.nii", "b.nii.gz", "c.nrrd", "d.mha")]
    assert volume_files(folder) == expected
    assert volume_files(str(folder) + "/") == expected


def test_a_glob_pattern_gives_the_volumes_it_matches(folder, monkeypatch):
    assert volume_files(f"{folder}/*.nii*") == [str(folder / "a.nii"), str(folder / "b.nii.gz")]
    assert volume_files(f"{folder}/**/*.nii.gz") == [str(folder / "b.nii.gz"), str(folder / "sub" / "e.nii.gz")]
    assert volume_files(f"{folder}/*") == volume_files(folder)  # raw, text and JSON files are left out
    monkeypatch.chdir(folder.parent)
    assert volume_files("ct/[ab].*") == [str(folder / "a.nii"), str(folder / "b.nii.gz")]  # relative to the cwd


def test_one_volume_file_is_a_list_of_one_and_json_is_not_a_volume_list(folder):
    assert volume_files(folder / "c.nrrd") == [str(folder / "c.nrrd")]
    assert volume_files(folder / "datalist.json") is None
    assert volume_files(folder / "missing.json") is None


def test_an_empty_folder_or_pattern_is_an_error_naming_it(tmp_path, folder):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=f"{tmp_path / 'empty'}: no volume files"):
        volume_files(tmp_path / "empty")
    with pytest.raises(ValueError, match=r"\*\.dcm: the pattern matches no volume files"):
        volume_files(f"{folder}/*.dcm")


def test_a_missing_datalist_says_what_a_datalist_can_be(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere: datalist .*a folder of volumes or a glob pattern"):
        load_datalists(tmp_path / "nowhere", tmp_path)


def test_load_datalists_merges_json_lists_folders_and_patterns(tmp_path, folder):
    datalist = tmp_path / "list.json"
    datalist.write_text(json.dumps({"training": ["x.nii.gz"], "testing": [{"image": "/abs/y.nii.gz"}]}))
    merged = load_datalists([str(datalist), str(folder / "sub"), f"{folder}/[cd].*"], "/data", "training")
    assert merged == [
        {"image": "/data/x.nii.gz"},
        {"image": str(folder / "sub" / "e.nii.gz")},
        {"image": str(folder / "c.nrrd")},
        {"image": str(folder / "d.mha")},
    ]
    # a folder has no split: every key gives all of its volumes; a JSON file gives its own list
    assert load_datalists(folder / "sub", "/data", "validation") == [{"image": str(folder / "sub" / "e.nii.gz")}]
    assert load_datalists(datalist, "/data", "testing") == [{"image": "/abs/y.nii.gz"}]


@pytest.mark.parametrize(
    "path, stem",
    [
        ("/data/case_01.nii.gz", "case_01"),
        ("case.NII.GZ", "case"),
        ("img.nii", "img"),
        ("/luna/1.3.6.1.4.1.14519.mhd", "1.3.6.1.4.1.14519"),
        ("ct.v2.nrrd", "ct.v2"),
        ("scan.mha", "scan"),
        ("slice.dcm", "slice"),
    ],
)
def test_volume_stem_strips_the_image_ending_only(path, stem):
    assert volume_stem(path) == stem
