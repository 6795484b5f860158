"""A synthetic 3-class COVID CT demo set (NCP, CP, Normal) derived from the two embedded chest CTs.

No labelled COVID-19 CT may be shipped with this package or downloaded by it, and two real CTs cannot
make a 3-class data set. :func:`make_demo_covid` therefore cuts sub-volumes from the embedded CTs
(:data:`voco_components.apps.demo.DEMO_DIR`) and inserts synthetic lesions whose appearance follows the
radiological descriptions of the classes:

- ``Normal``: the sub-volume unchanged.
- ``CP`` (common pneumonia): one dense consolidation, an ellipsoid of :data:`CONSOLIDATION_HU`, in one lung.
- ``NCP`` (COVID-19 pneumonia): 12 to 20 ground-glass opacities of :data:`GGO_HU` centred near the lung
  surface (peripheral), alternating between the two lungs.

The lesions are large (the opacities cover about a third to a half of the lungs, the consolidation a
tenth to a quarter of them), so that the classes still differ once a whole volume is shrunk to 32³ or 64³.

Each case is a slab of :data:`SLAB_SLICES` slices and a :data:`CROP_SIZE`² in-plane window, shifted by a
few voxels and flipped left-right at random. Every synthetic patient has one scan cut from each source
CT, so every class, and every fold of the patient-wise split, holds the two anatomies equally often and
only the lesions tell the classes apart. The cases are written the way the CC-CCII release stores
scans (8-bit slice images through a lung window, :data:`DEMO_WINDOW_HU`) and converted with
:func:`voco_components.apps.ccii.convert_dataset`, so the result has the layout, value range (0..255) and
patient-wise k-fold datalist of a converted CC-CCII release. Everything is a pure function of the seed.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from PIL import Image

from voco_components.apps.ccii import CLASS_NAMES, convert_dataset
from voco_components.apps.demo import DEMO_DIR
from voco_components.utils import atomic_save_text

__all__ = [
    "DEMO_WINDOW_HU",
    "CONSOLIDATION_HU",
    "GGO_HU",
    "SOURCES",
    "SPACING",
    "SLAB_SLICES",
    "CROP_SIZE",
    "DEMO_PATIENTS_PER_CLASS",
    "Lesion",
    "DemoCase",
    "window_to_uint8",
    "lung_mask",
    "lesion_mask",
    "load_source",
    "plan_case",
    "render_case",
    "make_demo_covid",
    "demo_covid_dir",
]

DEMO_WINDOW_HU: tuple[float, float] = (-1350.0, 150.0)
"""The lung window (width 1500, level -600 HU) that maps HU to the 8-bit slice values 0..255."""
CONSOLIDATION_HU: tuple[float, float] = (-100.0, 40.0)
"""HU range of the CP consolidation."""
GGO_HU: tuple[float, float] = (-700.0, -500.0)
"""HU range of the NCP ground-glass opacities."""
SOURCES: tuple[str, ...] = ("lung1", "lung2")
"""The embedded CTs (``<name>_image.nii.gz`` in :data:`voco_components.apps.demo.DEMO_DIR`), RAS, int16 HU."""
SPACING: tuple[float, float, float] = (1.5, 1.5, 5.0)
"""Voxel size of the embedded CTs and of the demo volumes, in mm."""
SLAB_SLICES = 16
"""Slices per case (80 mm)."""
CROP_SIZE = 160
"""In-plane size of a case in voxels (240 mm)."""
DEMO_PATIENTS_PER_CLASS = 20
"""Synthetic patients per class of the default demo set (two scans each: 120 volumes, 40 per fold)."""
LUNG_HU = -400.0
"""Voxels below this HU inside the body are lung."""
FORMAT_VERSION = 1

_MAX_SHIFT = 8  # in-plane shift of the crop centre, voxels
_PERIPHERAL_VOXELS = 6  # a GGO centre lies within this many in-plane voxels (9 mm) of the lung surface
_NOISE_HU = 20.0  # texture of the lesions


@dataclass(frozen=True)
class Lesion:
    """An ellipsoidal lesion in the coordinates of a case volume.

    Attributes:
        center: voxel (x, y, z).
        radii_mm: semi-axes (x, y, z) in mm.
        hu_range: the lesion's HU values are drawn from this range (clipped texture).
        x_range: the lesion stays within voxels ``x_range[0] <= x < x_range[1]`` (its side of the midline).
    """

    center: tuple[int, int, int]
    radii_mm: tuple[float, float, float]
    hu_range: tuple[float, float]
    x_range: tuple[int, int]


@dataclass(frozen=True)
class DemoCase:
    """How one demo volume is made: ``render_case`` turns it into voxels.

    Attributes:
        index: the case number.
        patient: the synthetic patient's id.
        class_name: ``NCP``, ``CP`` or ``Normal``.
        source: the embedded CT it is cut from (see :data:`SOURCES`); also the scan id within the patient.
        origin: voxel (x, y, z) of the source at the case's first voxel.
        flip: the crop is mirrored along x (left-right).
        lesions: inserted lesions, in the case's coordinates (after the flip).
        texture_seed: seed of the lesions' HU texture.
    """

    index: int
    patient: int
    class_name: str
    source: str
    origin: tuple[int, int, int]
    flip: bool
    lesions: tuple[Lesion, ...]
    texture_seed: int

    @property
    def label(self) -> int:
        return CLASS_NAMES.index(self.class_name)


def window_to_uint8(hu: np.ndarray) -> np.ndarray:
    """HU -> 8-bit slice values through :data:`DEMO_WINDOW_HU` (rounded, clipped to 0..255)."""
    low, high = DEMO_WINDOW_HU
    return np.clip(np.round((hu - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)


def _between(mask: np.ndarray, axis: int) -> np.ndarray:
    """True where ``mask`` has a True voxel on both sides along ``axis`` (the voxel itself counts)."""
    forward = np.logical_or.accumulate(mask, axis=axis)
    backward = np.flip(np.logical_or.accumulate(np.flip(mask, axis=axis), axis=axis), axis=axis)
    return forward & backward


def lung_mask(hu: np.ndarray) -> np.ndarray:
    """Lung voxels of an (X, Y, Z) HU volume: below :data:`LUNG_HU` and enclosed by body tissue in-plane.

    A voxel is enclosed when tissue (HU at or above :data:`LUNG_HU`) lies on both sides of it along x
    and along y in its slice; the air around the body is not.
    """
    tissue = hu >= LUNG_HU
    return (~tissue) & _between(tissue, 0) & _between(tissue, 1)


def _erode_in_plane(mask: np.ndarray, steps: int) -> np.ndarray:
    """Binary erosion of an (X, Y, Z) mask with a 3x3 in-plane cross, ``steps`` times."""
    out = mask.copy()
    for _ in range(steps):
        inner = out.copy()
        inner[1:] &= out[:-1]
        inner[:-1] &= out[1:]
        inner[:, 1:] &= out[:, :-1]
        inner[:, :-1] &= out[:, 1:]
        inner[[0, -1]] = False
        inner[:, [0, -1]] = False
        out = inner
    return out


def lesion_mask(lesion: Lesion, shape: tuple[int, int, int], spacing: tuple[float, ...] = SPACING) -> np.ndarray:
    """The voxels of ``shape`` inside ``lesion``'s ellipsoid and its ``x_range``."""
    grids = np.ogrid[tuple(slice(0, s) for s in shape)]
    distance = sum(
        ((g - c) * sp / r) ** 2 for g, c, sp, r in zip(grids, lesion.center, spacing, lesion.radii_mm, strict=True)
    )
    low, high = lesion.x_range
    return (distance <= 1.0) & (grids[0] >= low) & (grids[0] < high)


def load_source(name: str) -> np.ndarray:
    """An embedded CT as an (X, Y, Z) float32 HU array; checks its orientation and spacing."""
    path = DEMO_DIR / f"{name}_image.nii.gz"
    image = nib.load(str(path))
    if nib.aff2axcodes(image.affine) != ("R", "A", "S") or not np.allclose(image.header.get_zooms()[:3], SPACING):
        raise ValueError(f"{path}: expected an RAS volume with spacing {SPACING}.")
    return np.asarray(image.dataobj, dtype=np.float32)


def _slab_starts(lungs: np.ndarray) -> np.ndarray:
    """First slices of the slabs whose every slice holds at least 40 % of the largest lung area."""
    area = lungs.sum(axis=(0, 1))
    full = area >= 0.4 * area.max()
    runs = np.lib.stride_tricks.sliding_window_view(full, SLAB_SLICES).all(axis=1)
    starts = np.flatnonzero(runs)
    if not starts.size:
        raise ValueError(f"no slab of {SLAB_SLICES} slices with lung in every slice.")
    return starts


def _pick_voxel(candidates: np.ndarray, rng: np.random.Generator) -> tuple[int, int, int]:
    points = np.argwhere(candidates)
    if not len(points):
        raise ValueError("no lung voxel left to place a lesion in.")
    return tuple(int(v) for v in points[rng.integers(len(points))])  # type: ignore[return-value]


def _plan_lesions(class_name: str, lungs: np.ndarray, rng: np.random.Generator) -> tuple[Lesion, ...]:
    """Lesions of a case whose lung mask is ``lungs`` (case coordinates): none, one consolidation, or GGOs.

    The midline is the mean x of the lung voxels; each lesion stays on the side of its centre.
    """
    if class_name == "Normal":
        return ()
    midline = int(round(np.argwhere(lungs)[:, 0].mean()))
    x = np.arange(lungs.shape[0])[:, None, None]
    x_ranges = [(0, midline), (midline, lungs.shape[0])]
    sides = [lungs & (x < midline), lungs & (x >= midline)]
    first = int(rng.integers(2))
    if class_name == "CP":
        center = _pick_voxel(sides[first] & _erode_in_plane(lungs, 2 * _PERIPHERAL_VOXELS), rng)
        radii = (float(rng.uniform(55, 75)), float(rng.uniform(50, 70)), float(rng.uniform(35, 50)))
        return (Lesion(center, radii, CONSOLIDATION_HU, x_ranges[first]),)
    peripheral = lungs & ~_erode_in_plane(lungs, _PERIPHERAL_VOXELS)
    lesions = []
    for i in range(int(rng.integers(12, 21))):
        side = (first + i) % 2
        center = _pick_voxel(sides[side] & peripheral, rng)
        radius = float(rng.uniform(25, 40))
        radii = (radius, radius * float(rng.uniform(0.8, 1.2)), float(rng.uniform(15, 30)))
        lesions.append(Lesion(center, radii, GGO_HU, x_ranges[side]))
    return tuple(lesions)


def _crop(hu: np.ndarray, origin: tuple[int, int, int], flip: bool) -> np.ndarray:
    x, y, z = origin
    crop = hu[x : x + CROP_SIZE, y : y + CROP_SIZE, z : z + SLAB_SLICES]
    return crop[::-1].copy() if flip else crop.copy()


def plan_case(
    index: int, patient: int, class_name: str, seed: int, source: str, hu: np.ndarray, lungs: np.ndarray
) -> DemoCase:
    """Draw case ``index`` of ``class_name`` from ``source``, deterministically from ``seed``.

    Args:
        index: case number.
        patient: the synthetic patient's id.
        class_name: ``NCP``, ``CP`` or ``Normal``.
        seed: seed of the demo set.
        source: name of the source CT.
        hu: the source CT (X, Y, Z) in HU.
        lungs: its :func:`lung_mask`.
    """
    rng = np.random.default_rng([seed, index])
    z = int(rng.choice(_slab_starts(lungs)))
    center = np.argwhere(lungs[:, :, z : z + SLAB_SLICES])[:, :2].mean(axis=0)
    x, y = (
        int(np.clip(round(c - CROP_SIZE / 2 + rng.integers(-_MAX_SHIFT, _MAX_SHIFT + 1)), 0, s - CROP_SIZE))
        for c, s in zip(center, hu.shape[:2], strict=True)
    )
    flip = bool(rng.integers(2))
    case_lungs = lung_mask(_crop(hu, (x, y, z), flip))
    lesions = _plan_lesions(class_name, case_lungs, rng)
    return DemoCase(index, patient, class_name, source, (x, y, z), flip, lesions, int(rng.integers(2**31)))


def render_case(case: DemoCase, hu: np.ndarray) -> np.ndarray:
    """The (X, Y, Z) uint8 volume of ``case`` cut from its source CT ``hu``.

    Inside each lesion's ellipsoid, lung voxels take the larger of their own HU and the lesion's
    (a value drawn from its range with a little texture), so vessels denser than the lesion stay visible.
    """
    volume = _crop(hu, case.origin, case.flip)
    lungs = lung_mask(volume)
    rng = np.random.default_rng(case.texture_seed)
    for lesion in case.lesions:
        inside = lesion_mask(lesion, volume.shape) & lungs
        low, high = lesion.hu_range
        values = np.clip(rng.uniform(low, high) + rng.normal(0.0, _NOISE_HU, size=int(inside.sum())), low, high)
        volume[inside] = np.maximum(volume[inside], values)
    return window_to_uint8(volume)


def _write_slices(volume: np.ndarray, folder: Path) -> None:
    """Write an (X, Y, Z) uint8 volume as CC-CCII slice images ``<z>.png`` (rows = y, columns = x)."""
    folder.mkdir(parents=True)
    for z in range(volume.shape[2]):
        Image.fromarray(np.ascontiguousarray(volume[:, :, z].T)).save(folder / f"{z}.png", compress_level=1)


def _settings(patients_per_class: int, num_folds: int, seed: int) -> dict[str, Any]:
    return {
        "format_version": FORMAT_VERSION,
        "patients_per_class": patients_per_class,
        "num_folds": num_folds,
        "seed": seed,
        "window_hu": list(DEMO_WINDOW_HU),
    }


def make_demo_covid(
    output_dir: str | Path, patients_per_class: int = DEMO_PATIENTS_PER_CLASS, num_folds: int = 3, seed: int = 0
) -> Path:
    """Write the demo set: ``<output_dir>/images/<CLASS>_<patient>_<source>.nii.gz`` and a k-fold ``datalist.json``.

    The volumes are uint8 (X, Y, Z) = (160, 160, 16) with the true spacing :data:`SPACING`; the datalist is
    that of :func:`voco_components.apps.ccii.convert_dataset` (``fold0`` ... ``fold<k-1>``, ``training``, each entry
    ``{"image", "label", "patient"}``; all scans of a patient in one fold). ``demo_covid.json`` records the
    settings and every case's :class:`DemoCase`; it is written last, so its presence means the set is complete.

    Args:
        output_dir: destination folder.
        patients_per_class: synthetic patients per class, each with one scan per source CT.
        num_folds: folds of the datalist (at most ``3 * patients_per_class``).
        seed: seed of the whole set.

    Returns:
        the path of ``datalist.json``.
    """
    output_dir = Path(output_dir)
    sources = {name: load_source(name) for name in SOURCES}
    lungs = {name: lung_mask(hu) for name, hu in sources.items()}
    cases = []
    for label, class_name in enumerate(CLASS_NAMES):
        for i in range(patients_per_class):
            patient = label * patients_per_class + i
            for source in SOURCES:
                index = len(cases)
                cases.append(plan_case(index, patient, class_name, seed, source, sources[source], lungs[source]))
    output_dir.mkdir(parents=True, exist_ok=True)
    tree = Path(tempfile.mkdtemp(prefix=".slices_", dir=output_dir))
    try:
        for case in cases:
            folder = tree / case.class_name / str(case.patient) / case.source
            _write_slices(render_case(case, sources[case.source]), folder)
        datalist = convert_dataset(tree, output_dir, num_folds, seed, SPACING, skip_existing=False)
    finally:
        shutil.rmtree(tree, ignore_errors=True)
    record = {**_settings(patients_per_class, num_folds, seed), "cases": [asdict(case) for case in cases]}
    atomic_save_text(json.dumps(record, indent=4) + "\n", output_dir / "demo_covid.json")
    return datalist


def demo_covid_dir(
    output_dir: str | Path, patients_per_class: int = DEMO_PATIENTS_PER_CLASS, num_folds: int = 3, seed: int = 0
) -> str:
    """``output_dir`` holding the demo set, generated by :func:`make_demo_covid` unless already there.

    An existing set is reused when its ``demo_covid.json`` records the same settings; otherwise it is
    written again. Returns the folder as a string, for a bundle's ``dataset_dir``.
    """
    output_dir = Path(output_dir)
    record_path = output_dir / "demo_covid.json"
    wanted = _settings(patients_per_class, num_folds, seed)
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if {k: record.get(k) for k in wanted} == wanted and (output_dir / "datalist.json").is_file():
            return str(output_dir)
    make_demo_covid(output_dir, patients_per_class, num_folds, seed)
    return str(output_dir)
