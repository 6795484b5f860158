"""The ChestX-ray14-style demo set: the reconstructed radiographs' physics and orientation, the inserted findings, the
release layout it is written in, and its conversion."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from voco_components.apps import demo_cxr
from voco_components.apps.cxr14 import FINDINGS, read_data_entry
from voco_components.apps.demo import DEMO_DIR
from voco_components.apps.demo_cxr import DemoImage, load_source, reconstructed_radiograph, render_image

SMALL = 12  # patients


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return Path(demo_cxr.demo_cxr_dir(tmp_path_factory.mktemp("demo_cxr"), patients=SMALL))


def test_drr_is_the_attenuation_integral_along_anterior_posterior():
    """A water slab (HU 0) of 8 voxels x 2 mm in air gives 16 mm of water; bone (HU 1000) counts twice; air nothing.
    The patient's right (high x in RAS) is drawn on the left, the head (high z) at the top."""
    hu = np.full((20, 30, 10), -1000.0, dtype=np.float32)
    hu[2:6, 10:18, 0:10] = 0.0  # water on the patient's left side (low x), every slice
    hu[14:18, 10:14, 8:10] = 1000.0  # bone on the right (high x), top slices (high z)
    image, lungs = reconstructed_radiograph(hu, (2.0, 2.0, 2.0))
    assert image.shape == (10, 20) and not lungs.any()
    column = lambda x: 19 - x  # noqa: E731 (right to left)
    row = lambda z: 9 - z  # noqa: E731 (head to feet)
    np.testing.assert_allclose(image[row(5), column(3)], 16.0, rtol=1e-6)  # 8 voxels x 2 mm of water
    np.testing.assert_allclose(image[row(9), column(15)], 16.0, rtol=1e-6)  # 4 voxels x 2 mm x 2 (bone)
    np.testing.assert_allclose(image[row(2), column(15)], 0.0, atol=1e-6)  # air
    np.testing.assert_allclose(image[row(0), column(10)], 0.0, atol=1e-6)


def test_drr_lung_fields_are_enclosed_air():
    """Air enclosed by tissue along x and y (a lung) is a lung field where rays cross 20 mm of it; air outside the
    body is not."""
    hu = np.full((40, 40, 4), -1000.0, dtype=np.float32)
    hu[5:35, 5:35] = 40.0  # body
    hu[10:20, 10:30] = -850.0  # a lung 20 voxels deep (40 mm at 2 mm)
    hu[24:30, 10:14] = -850.0  # a pocket 4 voxels deep (8 mm)
    _, lungs = reconstructed_radiograph(hu, (2.0, 2.0, 2.0))
    columns = np.nonzero(lungs.any(axis=0))[0]
    assert sorted(39 - columns) == list(range(10, 20))  # only the deep lung, drawn right to left


def test_sources_are_chests_on_the_canvas():
    for name in demo_cxr.SOURCES:
        source = load_source(name)
        assert source.image.shape == source.lungs.shape == (160, 160)
        assert 0.0 <= source.image.min() and source.image.max() <= 1.0
        assert 0.15 < source.lungs.mean() < 0.6, name  # the lung fields fill a good part of the canvas
        assert source.view == ("PA" if name == "radiograph" else "AP")
    digest = json.loads((DEMO_DIR / "sha256.json").read_text())["radiograph_pa.png"]
    assert hashlib.sha256(demo_cxr.RADIOGRAPH.read_bytes()).hexdigest() == digest
    assert (DEMO_DIR / "PYDICOM_DATA_LICENSE.txt").read_text().startswith("MIT License")


@pytest.mark.parametrize(("finding", "sign"), [("Nodule", 1), ("Mass", 1), ("Emphysema", -1), ("Effusion", 1)])
def test_a_finding_adds_or_removes_attenuation_and_nothing_else(finding, sign):
    """Same image with and without one finding (same seed, so the same noise): the difference has the finding's
    sign, and lies in or near the lung fields."""
    source = load_source("lung2")
    plain = DemoImage("a.png", 1, 0, "lung2", "AP", (), (1.0, 2.0, 0.01, -0.01), 1.1, 5, False)
    with_finding = DemoImage(**{**plain.__dict__, "findings": (finding,)})
    difference = render_image(with_finding, source).astype(int) - render_image(plain, source).astype(int)
    assert (sign * difference >= 0).all() and (sign * difference > 10).sum() >= 5


def test_rendering_is_deterministic_and_refuses_the_wrong_source():
    plan = demo_cxr.plan_images(4, seed=3)[0]
    source = load_source(plan.source)
    assert np.array_equal(render_image(plan, source), render_image(plan, source))
    assert demo_cxr.plan_images(4, seed=3) == demo_cxr.plan_images(4, seed=3)
    other = next(name for name in demo_cxr.SOURCES if name != plan.source)
    with pytest.raises(ValueError, match="shows"):
        render_image(plan, load_source(other))


def test_demo_is_a_converted_release(demo):
    """The release files in the NIH's layout; datalists from the converter; labels as planned."""
    record = json.loads((demo / "demo_cxr.json").read_text())
    images = record["images"]
    assert record["patients"] == SMALL and {i["patient"] for i in images} == set(range(1, SMALL + 1))
    rows = {r.image: r for r in read_data_entry(demo / "Data_Entry_2017.csv")}
    assert sorted(rows) == sorted(i["name"] for i in images)
    test_list = (demo / "test_list.txt").read_text().split()
    assert test_list == [i["name"] for i in images if i["test"]]
    datalist = json.loads((demo / "datalist.json").read_text())
    by_name = {i["name"]: i for i in images}
    for entry in datalist["training"] + datalist["validation"] + datalist["testing"]:
        planned = by_name[Path(entry["image"]).name]
        assert entry["label"] == [int(f in planned["findings"]) for f in FINDINGS]
        pixels = np.asarray(Image.open(demo / entry["image"]))
        assert pixels.shape == (demo_cxr.IMAGE_SIZE, demo_cxr.IMAGE_SIZE) and pixels.dtype == np.uint8
    assert [Path(e["image"]).name for e in datalist["testing"]] == test_list
    assert json.loads((demo / "pretraining.json").read_text())["training"]


def test_demo_is_reused_when_complete(demo):
    stamp = (demo / "demo_cxr.json").stat().st_mtime_ns
    assert demo_cxr.demo_cxr_dir(demo, patients=SMALL) == str(demo)
    assert (demo / "demo_cxr.json").stat().st_mtime_ns == stamp
