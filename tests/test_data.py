"""Datalists as they come (voco_components.data): JSON files, folders, glob patterns and single volumes, merged."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from voco_components.data.datalists import (
    check_unique_outputs,
    load_datalists,
    output_name,
    output_root,
    volume_files,
)
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


def test_outputs_keep_the_folders_below_the_inputs_common_root():
    entries = [{"image": "/data/site_a/ct.nii.gz"}, {"image": "/data/site_b/ct.nii.gz"}, {"image": "/data/x.nrrd"}]
    assert output_root(entries) == "/data"
    assert [output_name(e["image"], "/data") for e in entries] == ["site_a/ct", "site_b/ct", "x"]
    assert output_root(entries[:1]) == "/data/site_a" and output_name(entries[0]["image"], "/data/site_a") == "ct"
    assert output_name("/data/1.3.6.99.mhd", "") == "1.3.6.99" and output_root([]) == ""
    assert check_unique_outputs(entries) == entries


@pytest.mark.parametrize(
    ("images", "name"),
    [
        (["/data/a/ct.nii.gz", "/data/a/ct.nrrd", "/data/b/ct.nii"], "a/ct"),
        (["/d/a/ct.nii.gz", "/d/a/ct.nii.gz"], "ct"),
    ],
)
def test_inputs_that_would_share_an_output_name_are_listed(images, name):
    with pytest.raises(ValueError, match="same name") as error:
        check_unique_outputs([{"image": p} for p in images])
    clashing = [p for p in images if "/a/" in p]
    assert f"{name}: {', '.join(clashing)}" in str(error.value) and "/data/b/ct.nii" not in str(error.value)


def test_a_relative_path_missing_under_dataset_dir_resolves_beside_its_datalist(tmp_path):
    """dataset_dir first (the user's data), then the JSON file's own folder; neither: the dataset_dir path,
    so that the file-not-found error names what the user asked for."""
    lists, user = tmp_path / "lists", tmp_path / "user"
    for path in (lists / "beside.nii.gz", user / "both.nii.gz", lists / "both.nii.gz"):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    datalist = lists / "list.json"
    entries = ["beside.nii.gz", "both.nii.gz", "nowhere.nii.gz"]
    datalist.write_text(json.dumps({"training": [{"image": e, "label": e} for e in entries]}))
    resolved = load_datalists(datalist, user, "training")
    expected = [str(lists / "beside.nii.gz"), str(user / "both.nii.gz"), str(user / "nowhere.nii.gz")]
    assert [e["image"] for e in resolved] == [e["label"] for e in resolved] == expected
