"""The ChestX-ray14 converter on a generated release in the NIH's exact format: parts split by patient (no patient in
two parts), the official test list kept as the test set, fractions by patient, determinism, the view filter, labels,
and the errors that name the file."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from voco_components.apps import cxr14
from voco_components.apps.cxr14 import FINDINGS, convert_release, main
from voco_components.data.datalists import load_datalists

HEADER = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
    "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],"
)  # the release's header: the bracketed names split over two columns, and a trailing comma


def make_release(root: Path, num_patients: int = 50, seed: int = 0, test_share: float = 0.25) -> dict[str, dict]:
    """A ChestX-ray14-style release in ``root``: Data_Entry_2017.csv, train_val_list.txt, test_list.txt and tiny
    PNGs in images_001/images and images_002/images. Patients 1..N with 1-4 images each; a quarter of the patients
    (whole) in the test list. Returns image name -> {patient, view, findings, test}."""
    rng = random.Random(seed)
    truth: dict[str, dict] = {}
    lines = [HEADER]
    for patient in range(1, num_patients + 1):
        test = rng.random() < test_share
        for follow_up in range(rng.randint(1, 4)):
            name = f"{patient:08d}_{follow_up:03d}.png"
            findings = sorted(rng.sample(FINDINGS, rng.choice([0, 0, 1, 1, 2, 3])), key=FINDINGS.index)
            view = rng.choice(["PA", "PA", "AP"])
            text = "|".join(findings) or "No Finding"
            lines.append(f"{name},{text},{follow_up},{patient},{rng.randint(20, 80)},M,{view},2500,2048,0.143,0.143,")
            truth[name] = {"patient": str(patient), "view": view, "findings": findings, "test": test}
    (root / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    (root / "train_val_list.txt").write_text("".join(f"{n}\n" for n, t in truth.items() if not t["test"]))
    (root / "test_list.txt").write_text("".join(f"{n}\n" for n, t in truth.items() if t["test"]))
    pixels = np.zeros((8, 8), dtype=np.uint8)
    for index, name in enumerate(truth):
        folder = root / f"images_{1 + index % 2:03d}" / "images"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(folder / name)
    return truth


@pytest.fixture
def release(tmp_path) -> tuple[Path, dict[str, dict]]:
    root = tmp_path / "nih"
    root.mkdir()
    return root, make_release(root)


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def parts_of(root: Path, out: Path | None = None) -> dict[str, list[dict]]:
    out = out or root
    datalist, pretraining = read(out / "datalist.json"), read(out / "pretraining.json")
    return {
        "pretraining": pretraining["training"],
        **{name: datalist[name] for name in ("training", "validation", "testing")},
    }


def test_no_patient_in_two_parts_and_every_image_in_one(release):
    root, truth = release
    convert_release(root)
    parts = parts_of(root)
    patients = {name: {e["patient"] for e in entries} for name, entries in parts.items()}
    names = list(patients)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            assert not patients[a] & patients[b], (a, b)
    listed = [Path(e["image"]).name for entries in parts.values() for e in entries]
    assert sorted(listed) == sorted(truth)  # every image once, none dropped (no leaking patient here)


def test_the_official_test_list_is_the_test_set_in_its_order(release):
    root, truth = release
    convert_release(root)
    testing = read(root / "datalist.json")["testing"]
    assert [Path(e["image"]).name for e in testing] == (root / "test_list.txt").read_text().split()
    assert all(truth[Path(e["image"]).name]["test"] for e in testing)


def test_fractions_are_by_patient(release):
    root, truth = release
    convert_release(root, pretrain_fraction=0.6, val_fraction=0.25)
    parts = parts_of(root)
    train_val_patients = {t["patient"] for t in truth.values() if not t["test"]}
    count = {name: len({e["patient"] for e in entries}) for name, entries in parts.items()}
    assert count["pretraining"] == round(0.6 * len(train_val_patients))
    rest = len(train_val_patients) - count["pretraining"]
    assert count["validation"] == round(0.25 * rest) and count["training"] == rest - count["validation"]
    # every image of a patient goes where the patient goes
    for entries in parts.values():
        for patient in {e["patient"] for e in entries}:
            mine = {n for n, t in truth.items() if t["patient"] == patient}
            assert mine == {Path(e["image"]).name for e in entries if e["patient"] == patient}


def test_labels_and_paths(release):
    root, truth = release
    convert_release(root)
    datalist = read(root / "datalist.json")
    assert datalist["findings"] == list(FINDINGS) and len(FINDINGS) == 14
    for name in ("training", "validation", "testing"):
        for entry in datalist[name]:
            fact = truth[Path(entry["image"]).name]
            assert entry["label"] == [int(f in fact["findings"]) for f in FINDINGS]
            assert (entry["patient"], entry["view"]) == (fact["patient"], fact["view"])
            assert (root / entry["image"]).is_file() and entry["image"].startswith("images_00")
    assert all("label" not in e for e in read(root / "pretraining.json")["training"])
    entries = load_datalists(root / "datalist.json", root, "testing")  # paths resolve against dataset_dir
    assert all(Path(e["image"]).is_file() for e in entries)


def test_deterministic_and_independent_of_the_csv_row_order(release, tmp_path):
    root, _ = release
    convert_release(root, output_dir=tmp_path / "a")
    convert_release(root, output_dir=tmp_path / "b")
    for name in ("datalist.json", "pretraining.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    lines = (root / "Data_Entry_2017.csv").read_text().splitlines()
    random.Random(5).shuffle(body := lines[1:])
    (root / "Data_Entry_2017.csv").write_text("\n".join([lines[0], *body]) + "\n")
    convert_release(root, output_dir=tmp_path / "c")
    assert {n: {e["patient"] for e in es} for n, es in parts_of(root, tmp_path / "a").items()} == {
        n: {e["patient"] for e in es} for n, es in parts_of(root, tmp_path / "c").items()
    }
    convert_release(root, output_dir=tmp_path / "d", seed=1)
    assert parts_of(root, tmp_path / "d")["pretraining"] != parts_of(root, tmp_path / "a")["pretraining"]


def test_pa_only(release):
    root, truth = release
    convert_release(root, views=["PA"], pretrain_fraction=0.5)
    parts = parts_of(root)
    assert all(e["view"] == "PA" for entries in parts.values() for e in entries)
    pa = {n for n, t in truth.items() if t["view"] == "PA"}
    assert sorted(Path(e["image"]).name for entries in parts.values() for e in entries) == sorted(pa)
    pa_patients = {truth[n]["patient"] for n in pa if not truth[n]["test"]}
    assert len({e["patient"] for e in parts["pretraining"]}) == round(0.5 * len(pa_patients))


def test_a_test_patient_never_pretrains_or_fine_tunes(release, caplog):
    """A train-val image of a patient of the test list is left out, with a warning."""
    root, truth = release
    test_patient = next(t["patient"] for t in truth.values() if t["test"])
    name = f"{int(test_patient):08d}_099.png"
    with open(root / "Data_Entry_2017.csv", "a") as handle:
        handle.write(f"{name},Nodule,99,{test_patient},40,F,PA,2500,2048,0.143,0.143,\n")
    with open(root / "train_val_list.txt", "a") as handle:
        handle.write(name + "\n")
    Image.fromarray(np.zeros((8, 8), dtype=np.uint8)).save(root / "images_001" / "images" / name)
    convert_release(root)
    parts = parts_of(root)
    assert all(Path(e["image"]).name != name for entries in parts.values() for e in entries)
    assert test_patient in {e["patient"] for e in parts["testing"]}
    assert "left out" in caplog.text


def test_pretraining_validation_is_held_out_fine_tuning_validation(release):
    root, _ = release
    convert_release(root, val_fraction=0.3, pretrain_val_images=3)
    validation = read(root / "pretraining.json")["validation"]
    fine_tuning = [e["image"] for e in read(root / "datalist.json")["validation"]]
    assert 0 < len(validation) <= 3 and {e["image"] for e in validation} <= set(fine_tuning)


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda t: t.replace(",Cardiomegaly,", ",Cardiomegally,", 1), "unknown finding"),
        (lambda t: t.replace("No Finding", "No Finding|Mass", 1), "unknown finding"),
        (lambda t: t.replace("View Position", "View"), r"missing column\(s\) \['View Position'\]"),
        (lambda t: t.replace(",PA,", ",LL,", 1), "View Position 'LL'"),
    ],
)
def test_bad_csv_names_the_file_and_line(release, edit, match):
    root, _ = release
    csv_path = root / "Data_Entry_2017.csv"
    text = csv_path.read_text()
    if ",Cardiomegaly," not in text:  # make sure the first case has something to misspell
        text = text.replace(",No Finding,", ",Cardiomegaly,", 1)
    csv_path.write_text(edit(text))
    with pytest.raises(ValueError, match=match) as info:
        convert_release(root)
    assert "Data_Entry_2017.csv" in str(info.value)


def test_a_listed_image_without_a_row_or_a_file_is_refused(release):
    root, truth = release
    with open(root / "test_list.txt", "a") as handle:
        handle.write("99999999_000.png\n")
    with pytest.raises(ValueError, match=r"test_list.txt: 1 images are not in Data_Entry_2017.csv"):
        convert_release(root)
    (root / "test_list.txt").write_text("".join(f"{n}\n" for n, t in truth.items() if t["test"]))
    missing = next(iter(truth))
    next(root.glob(f"images_*/images/{missing}")).unlink()
    with pytest.raises(ValueError, match=rf"1 listed images are not in the images\*/ folders, e.g. \['{missing}'\]"):
        convert_release(root)
    convert_release(root, check_images=False)  # without the check the datalists are written anyway


def test_command_line(release, capsys):
    root, _ = release
    assert main([str(root), "--views", "PA", "AP", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "pretraining" in out and "testing" in out and "Pleural_Thickening" in out
    assert main([str(root / "nowhere")]) == 1
    assert "Data_Entry_2017.csv not found" in capsys.readouterr().err


def test_module_exports():
    assert set(cxr14.__all__) <= set(dir(cxr14))
