"""A ChestX-ray14-style demo set: radiograph-like images of real chests with the 14 findings inserted synthetically.

No labelled chest radiograph may be shipped with this package or downloaded by it. :func:`make_demo_cxr`
therefore builds a small set from four real chests:

- three **digitally reconstructed radiographs** (DRRs) of the embedded chest CTs ``lung1``, ``lung2`` and
  ``chest_cta`` (:data:`voco_components.apps.demo.DEMO_DIR`): Hounsfield units become linear attenuation
  relative to water, ``max(0, 1 + HU / 1000)``, integrated along the anterior-posterior axis (parallel rays)
  and shown with the patient's right on the left and the head at the top, as a frontal radiograph is read;
- the real posteroanterior radiograph ``radiograph_pa.png`` (pydicom-data's ``RG1_UNCR.dcm``, MIT; made by
  ``tools/make_demo_radiograph.py``). It shows round opacities of its own, in every class alike.

Each synthetic patient is one of the four chests under its own scale, rotation, shift and exposure; each of
its 1 to :data:`MAX_FOLLOW_UPS` images adds a small jitter and noise, and none to three findings drawn
uniformly from the 14 (:data:`NO_FINDING_SHARE` of the images have none). The findings are drawn on the image
as added attenuation, shaped after their textbook radiographic signs (:data:`FINDING_SIGNS`); they are not real
pathology. The set is written in the NIH release's layout (``Data_Entry_2017.csv``, ``train_val_list.txt``,
``test_list.txt``, ``images_001/images/*.png``, :data:`IMAGE_SIZE` pixels square, 8 bits) with a quarter of
the patients on the test list, and converted with :func:`voco_components.apps.cxr14.convert_release`, so the
demo exercises the same conversion and patient-wise splits as the real data. Everything is a pure function
of the seed.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from voco_components.apps.cxr14 import CSV_NAME, FINDINGS, NO_FINDING, TEST_LIST, TRAIN_VAL_LIST, convert_release
from voco_components.apps.demo import DEMO_DIR
from voco_components.utils import atomic_save_text, atomic_write

__all__ = [
    "SOURCES",
    "RADIOGRAPH",
    "IMAGE_SIZE",
    "DEMO_PATIENTS",
    "MAX_FOLLOW_UPS",
    "NO_FINDING_SHARE",
    "TEST_SHARE",
    "FINDING_SIGNS",
    "SourceImage",
    "DemoImage",
    "reconstructed_radiograph",
    "load_source",
    "plan_images",
    "render_image",
    "make_demo_cxr",
    "demo_cxr_dir",
]

SOURCES: tuple[str, ...] = ("lung1", "lung2", "chest_cta", "radiograph")
"""The four chests: DRRs of three embedded CTs and the embedded radiograph."""
RADIOGRAPH = DEMO_DIR / "radiograph_pa.png"
"""The real PA radiograph (256 x 272, 8-bit), see ``tools/make_demo_radiograph.py``."""
RADIOGRAPH_LUNGS = ((0.46, 0.27, 0.34, 0.17), (0.46, 0.72, 0.34, 0.165))
"""The lung fields of :data:`RADIOGRAPH` as ellipses (centre row, centre column, semi-axes), in image fractions."""
IMAGE_SIZE = 128
"""Side of the demo images in pixels (the release's are 1024)."""
DEMO_PATIENTS = 160
MAX_FOLLOW_UPS = 3
NO_FINDING_SHARE = 0.45
TEST_SHARE = 0.25
FORMAT_VERSION = 1
FINDING_SIGNS: dict[str, str] = {
    "Atelectasis": "a thin dense band across the lower zone of one lung",
    "Cardiomegaly": "a dense cardiac silhouette widened towards the patient's left",
    "Effusion": "dense fluid filling one costophrenic angle, its meniscus rising laterally",
    "Infiltration": "several faint ill-defined patches in the lungs",
    "Mass": "one dense round opacity of 14 to 20 pixels",
    "Nodule": "one to three dense round opacities of 4 to 7 pixels",
    "Pneumonia": "a large mottled patchy opacity in the middle or lower zone of one lung",
    "Pneumothorax": "a lucent apical-lateral cap of one lung bounded by a thin pleural line",
    "Consolidation": "a dense homogeneous opacity confined to the lung",
    "Edema": "symmetric perihilar haze in both lungs",
    "Emphysema": "hyperlucent lungs",
    "Fibrosis": "a reticular net in the lower lateral lungs",
    "Pleural_Thickening": "a dense band along the lateral border of one lung",
    "Hernia": "a round retrocardiac density at the lung bases with an air cap",
}
"""How each finding is drawn (see :func:`render_image`)."""

_CANVAS = 160  # side of the square source canvas, pixels
_MARGIN = 0.12  # canvas margin around the lung fields, fraction of their larger side
_LUNG_MM = 20.0  # a DRR pixel whose rays cross this much lung is lung field
_WATER_HU = -1000.0


@dataclass(frozen=True)
class SourceImage:
    """A chest on the square source canvas.

    Attributes:
        name: the source (see :data:`SOURCES`).
        image: (rows, columns) float32 in [0, 1], attenuation shown bright.
        lungs: (rows, columns) bool lung fields.
        view: ``AP`` for the DRRs (CT patients lie supine), ``PA`` for the radiograph.
    """

    name: str
    image: np.ndarray
    lungs: np.ndarray
    view: str


@dataclass(frozen=True)
class DemoImage:
    """How one demo image is made: :func:`render_image` turns it into pixels.

    Attributes:
        name: the release's file name, ``<patient:08d>_<follow-up:03d>.png``.
        patient: the synthetic patient (1, 2, ...).
        follow_up: the image's number within the patient.
        source: the chest it shows.
        view: its view position.
        findings: the inserted findings, in :data:`FINDINGS` order.
        geometry: scale, rotation (degrees), shift along rows and columns (canvas fractions).
        gamma: the exposure curve's exponent.
        seed: seed of the findings' placement and the noise.
        test: on the test list.
    """

    name: str
    patient: int
    follow_up: int
    source: str
    view: str
    findings: tuple[str, ...]
    geometry: tuple[float, float, float, float]
    gamma: float
    seed: int
    test: bool


def _percentile_window(image: np.ndarray, where: np.ndarray, low: float = 0.5, high: float = 99.5) -> np.ndarray:
    lo, hi = np.percentile(image[where], (low, high))
    return np.clip((image - lo) / max(hi - lo, 1e-6), 0.0, 1.0).astype(np.float32)


def _resize(array: np.ndarray, shape: tuple[int, int], mode: str = "bilinear") -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))[None, None]
    if mode == "nearest":
        return F.interpolate(tensor, size=shape, mode="nearest")[0, 0].numpy()
    return F.interpolate(tensor, size=shape, mode="bilinear", align_corners=False, antialias=True)[0, 0].numpy()


def _lungs_3d(hu: np.ndarray) -> np.ndarray:
    """Lung voxels of an (X, Y, Z) HU volume: air enclosed by tissue on both sides along x and along y."""
    tissue = hu >= -400.0
    inside = np.ones_like(tissue)
    for axis in (0, 1):
        forward = np.logical_or.accumulate(tissue, axis=axis)
        backward = np.flip(np.logical_or.accumulate(np.flip(tissue, axis=axis), axis=axis), axis=axis)
        inside &= forward & backward
    return ~tissue & inside


def reconstructed_radiograph(hu: np.ndarray, spacing: tuple[float, ...]) -> tuple[np.ndarray, np.ndarray]:
    """A frontal DRR of an (X, Y, Z) RAS CT in HU and its lung fields.

    Returns:
        the attenuation integrated along y (anterior-posterior) in water-equivalent mm, and the bool lung
        fields (rays crossing at least 20 mm of lung), both (rows, columns): rows run from head to feet
        (decreasing z), columns from the patient's right to left (decreasing x), resampled to square pixels
        of the in-plane spacing.
    """
    attenuation = np.clip(1.0 + hu.astype(np.float32) / -_WATER_HU, 0.0, None)
    line_integral = attenuation.sum(axis=1) * spacing[1]
    lung_path = _lungs_3d(hu).sum(axis=1) * spacing[1]
    shape = (round(hu.shape[2] * spacing[2] / spacing[0]), hu.shape[0])
    image = _resize(line_integral[::-1, ::-1].T, shape)
    lungs = _resize(lung_path[::-1, ::-1].T, shape) >= _LUNG_MM
    return image, lungs


def _ellipse_lungs(shape: tuple[int, int]) -> np.ndarray:
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    mask = np.zeros(shape, dtype=bool)
    for cy, cx, ry, rx in RADIOGRAPH_LUNGS:
        mask |= ((rows / shape[0] - cy) / ry) ** 2 + ((cols / shape[1] - cx) / rx) ** 2 <= 1.0
    return mask


def _square_canvas(image: np.ndarray, lungs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The square around the lung fields (plus a margin), padded with zeros, resized to the canvas."""
    rows, cols = np.nonzero(lungs)
    centre = ((rows.min() + rows.max()) / 2, (cols.min() + cols.max()) / 2)
    half = (1 + 2 * _MARGIN) * max(rows.max() - rows.min(), cols.max() - cols.min()) / 2
    box = [(round(c - half), round(c + half)) for c in centre]
    pad = max(0, -min(b[0] for b in box), max(b[1] - s for b, s in zip(box, image.shape, strict=True)))
    padded_image, padded_lungs = np.pad(image, pad), np.pad(lungs, pad)  # outside the field of view: no attenuation
    window = tuple(slice(a + pad, b + pad) for a, b in box)
    canvas = (_CANVAS, _CANVAS)
    return _resize(padded_image[window], canvas), _resize(padded_lungs[window], canvas, "nearest") > 0.5


def load_source(name: str) -> SourceImage:
    """One of :data:`SOURCES` on the square canvas, windowed to [0, 1] over the body."""
    if name == "radiograph":
        pixels = np.asarray(Image.open(RADIOGRAPH).convert("L"), dtype=np.float32) / 255.0
        image, lungs = _square_canvas(pixels, _ellipse_lungs(pixels.shape))
        return SourceImage(name, np.clip(image, 0.0, 1.0), lungs, "PA")
    if name not in SOURCES:
        raise ValueError(f"unknown demo source {name!r}; choose one of {SOURCES}.")
    volume = nib.load(str(DEMO_DIR / f"{name}_image.nii.gz"))
    if nib.aff2axcodes(volume.affine) != ("R", "A", "S"):
        raise ValueError(f"{DEMO_DIR / name}_image.nii.gz: expected an RAS volume.")
    drr, lungs = reconstructed_radiograph(np.asarray(volume.dataobj), volume.header.get_zooms()[:3])
    image, lungs = _square_canvas(drr, lungs)
    return SourceImage(name, _percentile_window(image, image > 0.02 * image.max()), lungs, "AP")


def plan_images(patients: int = DEMO_PATIENTS, seed: int = 0) -> list[DemoImage]:
    """Draw every image of the demo set: patients, their chest and geometry, follow-ups and findings."""
    rng = np.random.default_rng([seed, 0])
    images = []
    for patient in range(1, patients + 1):
        source = SOURCES[(patient - 1) % len(SOURCES)]
        scale, angle = float(rng.uniform(0.92, 1.08)), float(rng.uniform(-5.0, 5.0))
        shift = (float(rng.uniform(-0.04, 0.04)), float(rng.uniform(-0.04, 0.04)))
        gamma, test = float(rng.uniform(0.8, 1.25)), bool(rng.random() < TEST_SHARE)
        for follow_up in range(int(rng.integers(1, MAX_FOLLOW_UPS + 1))):
            count = 0 if rng.random() < NO_FINDING_SHARE else int(rng.integers(1, 4))
            findings = tuple(sorted(rng.choice(len(FINDINGS), size=count, replace=False).tolist()))
            jitter = rng.uniform(-1.0, 1.0, size=4) * (0.02, 1.5, 0.01, 0.01)
            geometry = (scale + jitter[0], angle + jitter[1], shift[0] + jitter[2], shift[1] + jitter[3])
            images.append(
                DemoImage(
                    name=f"{patient:08d}_{follow_up:03d}.png",
                    patient=patient,
                    follow_up=follow_up,
                    source=source,
                    view="PA" if source == "radiograph" else "AP",
                    findings=tuple(FINDINGS[i] for i in findings),
                    geometry=tuple(float(g) for g in geometry),  # type: ignore[arg-type]
                    gamma=gamma,
                    seed=int(rng.integers(2**31)),
                    test=test,
                )
            )
    return images


def _warp(source: SourceImage, geometry: tuple[float, float, float, float]) -> tuple[np.ndarray, np.ndarray]:
    """The source canvas seen through ``geometry`` on the IMAGE_SIZE grid: (image, lungs)."""
    scale, angle, shift_rows, shift_cols = geometry
    theta = math.radians(angle)
    # grid_sample's affine grid: output (x = column, y = row) in [-1, 1] -> source position in [-1, 1]
    matrix = torch.tensor(
        [
            [math.cos(theta) / scale, -math.sin(theta) / scale, 2 * shift_cols],
            [math.sin(theta) / scale, math.cos(theta) / scale, 2 * shift_rows],
        ],
        dtype=torch.float32,
    )[None]
    grid = F.affine_grid(matrix, [1, 1, IMAGE_SIZE, IMAGE_SIZE], align_corners=False)
    stacked = torch.from_numpy(np.stack([source.image, source.lungs.astype(np.float32)]))[None]
    image = F.grid_sample(stacked[:, :1], grid, mode="bilinear", padding_mode="border", align_corners=False)
    lungs = F.grid_sample(stacked[:, 1:], grid, mode="nearest", padding_mode="zeros", align_corners=False)
    return image[0, 0].numpy(), lungs[0, 0].numpy() > 0.5


class _Canvas:
    """The output grid and its lung fields, with the helpers the findings are drawn with."""

    def __init__(self, lungs: np.ndarray, rng: np.random.Generator) -> None:
        self.lungs, self.rng = lungs, rng
        self.rows, self.cols = np.mgrid[0:IMAGE_SIZE, 0:IMAGE_SIZE].astype(np.float32)
        columns = np.nonzero(lungs.any(axis=0))[0]
        self.midline = float(np.nonzero(lungs)[1].mean()) if lungs.any() else IMAGE_SIZE / 2
        self.sides = [lungs & (self.cols < self.midline), lungs & (self.cols >= self.midline)]
        self.extent = (int(columns.min()), int(columns.max())) if len(columns) else (0, IMAGE_SIZE - 1)

    def box(self, side: int) -> tuple[float, float, float, float]:
        """(top, bottom, left, right) of one lung field (0: the patient's right, on the image's left)."""
        rows, cols = np.nonzero(self.sides[side])
        if not len(rows):
            return (0.3 * IMAGE_SIZE, 0.8 * IMAGE_SIZE, 0.1 * IMAGE_SIZE, 0.9 * IMAGE_SIZE)
        return float(rows.min()), float(rows.max()), float(cols.min()), float(cols.max())

    def lung_point(self, side: int | None = None) -> tuple[float, float]:
        """A random pixel of the lung fields (of one side)."""
        mask = self.lungs if side is None else self.sides[side]
        points = np.argwhere(mask)
        if not len(points):
            return IMAGE_SIZE / 2, IMAGE_SIZE / 2
        row, col = points[self.rng.integers(len(points))]
        return float(row), float(col)

    def distance2(self, row: float, col: float, radius_rows: float, radius_cols: float) -> np.ndarray:
        return ((self.rows - row) / radius_rows) ** 2 + ((self.cols - col) / radius_cols) ** 2

    def sphere(self, row: float, col: float, radius_rows: float, radius_cols: float | None = None) -> np.ndarray:
        """The projected thickness of an ellipsoid, 1 at its centre."""
        return np.sqrt(np.clip(1.0 - self.distance2(row, col, radius_rows, radius_cols or radius_rows), 0.0, 1.0))

    def gaussian(self, row: float, col: float, sigma_rows: float, sigma_cols: float) -> np.ndarray:
        return np.exp(-0.5 * self.distance2(row, col, sigma_rows, sigma_cols))

    def smooth_noise(self, cells: int = 8) -> np.ndarray:
        """Noise in [0, 1] smooth over IMAGE_SIZE / cells pixels."""
        coarse = self.rng.random((cells, cells)).astype(np.float32)
        return _resize(coarse, (IMAGE_SIZE, IMAGE_SIZE))


def _finding(name: str, c: _Canvas) -> np.ndarray:
    """The attenuation one finding adds, (IMAGE_SIZE, IMAGE_SIZE); see :data:`FINDING_SIGNS`."""
    rng, side = c.rng, int(c.rng.integers(2))
    top, bottom, left, right = c.box(side)
    height, width = bottom - top, right - left
    lateral = left if side == 0 else right
    medial = right if side == 0 else left
    if name == "Atelectasis":
        row = top + rng.uniform(0.6, 0.8) * height
        slope = rng.uniform(-0.15, 0.15)
        centre = (c.rows - row - slope * (c.cols - lateral)) / 1.5
        span = (c.cols - min(lateral, medial)) / max(width, 1.0)
        return 0.3 * np.exp(-0.5 * centre**2) * ((span > 0.15) & (span < 0.85)) * c.sides[side]
    if name == "Cardiomegaly":
        _, lowest, _, _ = c.box(1)
        row, col = lowest - 0.22 * height, c.midline + 0.08 * IMAGE_SIZE
        return 0.2 * c.sphere(row, col, 0.14 * IMAGE_SIZE, 0.21 * IMAGE_SIZE)
    if name == "Effusion":
        level = top + rng.uniform(0.65, 0.8) * height
        lateralness = np.clip(np.abs(c.cols - medial) / max(width, 1.0), 0.0, 1.0)
        boundary = level - 0.25 * height * lateralness**2
        return 0.3 * np.clip((c.rows - boundary) / 6.0, 0.0, 1.0) * c.sides[side]
    if name == "Infiltration":
        patches = sum(
            rng.uniform(0.12, 0.18) * c.gaussian(*c.lung_point(), rng.uniform(3, 6), rng.uniform(3, 6))
            for _ in range(int(rng.integers(4, 8)))
        )
        return patches * c.lungs
    if name == "Mass":
        row, col = c.lung_point()
        return 0.35 * c.sphere(row, col, rng.uniform(7, 10))
    if name == "Nodule":
        return sum(0.4 * c.sphere(*c.lung_point(), rng.uniform(2.0, 3.5)) for _ in range(int(rng.integers(1, 4))))
    if name == "Pneumonia":
        row = top + rng.uniform(0.45, 0.8) * height
        col = (left + right) / 2 + rng.uniform(-0.15, 0.15) * width
        patch = c.gaussian(row, col, rng.uniform(8, 12), rng.uniform(6, 9))
        return 0.32 * patch * (0.5 + 0.5 * c.smooth_noise(16)) * c.sides[side]
    if name == "Pneumothorax":
        reach = np.abs(c.cols - lateral) / max(width, 1.0) + (c.rows - top) / max(height, 1.0)
        cap = rng.uniform(0.35, 0.5)
        line = np.exp(-0.5 * ((reach - cap) * max(width, 1.0) / 0.7) ** 2)
        return (-0.2 * (reach < cap) + 0.25 * line) * c.sides[side]
    if name == "Consolidation":
        row, col = c.lung_point(side)
        region = np.clip(2.0 * c.gaussian(row, col, rng.uniform(7, 10), rng.uniform(8, 12)), 0.0, 1.0)
        return 0.3 * region * c.sides[side]
    if name == "Edema":
        haze = np.zeros_like(c.rows)
        for s in (0, 1):
            t, b, lft, rgt = c.box(s)
            hilum = rgt - 0.25 * (rgt - lft) if s == 0 else lft + 0.25 * (rgt - lft)
            haze += c.gaussian(t + 0.5 * (b - t), hilum, 10.0, 8.0)
        return 0.25 * haze * c.lungs
    if name == "Emphysema":
        coarse = _resize(c.lungs.astype(np.float32), (IMAGE_SIZE // 8, IMAGE_SIZE // 8))
        return -0.12 * _resize(coarse, (IMAGE_SIZE, IMAGE_SIZE))
    if name == "Fibrosis":
        wavelength, phase = rng.uniform(4.0, 5.0), rng.uniform(0, 2 * np.pi, size=2)
        net = np.cos(2 * np.pi * c.cols / wavelength + phase[0]) * np.cos(2 * np.pi * c.rows / wavelength + phase[1])
        lower = c.rows > top + 0.5 * height
        peripheral = np.abs(c.cols - c.midline) > 0.5 * np.abs(lateral - c.midline)
        return 0.2 * (np.abs(net) > 0.6) * c.lungs * lower * peripheral
    if name == "Pleural_Thickening":
        band = np.zeros_like(c.rows)
        for r in range(int(top), int(top + 0.7 * height)):
            columns = np.nonzero(c.sides[side][r])[0]
            if len(columns):
                edge = columns.min() if side == 0 else columns.max()
                band[r] = np.exp(-0.5 * ((c.cols[r] - edge) / 1.5) ** 2)
        return 0.3 * band
    if name == "Hernia":
        _, lowest, _, _ = c.box(1)
        row, col, radius = lowest - rng.uniform(0.05, 0.12) * height, c.midline, rng.uniform(7, 9)
        body = c.sphere(row, col, radius)
        air = c.rows < row - 0.3 * radius
        return 0.3 * body * ~air - 0.15 * body * air
    raise ValueError(f"unknown finding {name!r}; choose one of {FINDINGS}.")


def render_image(plan: DemoImage, source: SourceImage) -> np.ndarray:
    """The (IMAGE_SIZE, IMAGE_SIZE) uint8 image of ``plan`` (rows, columns, as a PNG stores them)."""
    if source.name != plan.source:
        raise ValueError(f"{plan.name} shows {plan.source}, not {source.name}.")
    image, lungs = _warp(source, plan.geometry)
    canvas = _Canvas(lungs, np.random.default_rng([plan.seed, 0]))
    added = sum((_finding(name, canvas) for name in plan.findings), np.zeros_like(image))
    exposed = np.clip(image, 0.0, 1.0) ** plan.gamma
    noise = np.random.default_rng([plan.seed, 1]).normal(0.0, 0.01, size=image.shape)  # the same with any findings
    noisy = exposed + added + noise
    return np.round(np.clip(noisy, 0.0, 1.0) * 255).astype(np.uint8)


def _write_png(path: Path, pixels: np.ndarray) -> None:
    """An 8-bit grayscale PNG, written atomically."""
    image = Image.fromarray(pixels)
    atomic_write(path, lambda handle: image.save(handle, format="PNG"))


def _data_entry(plans: list[DemoImage]) -> str:
    """``Data_Entry_2017.csv`` of the demo set, in the release's format (its header and trailing commas)."""
    buffer = io.StringIO()
    buffer.write(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position,"
        "OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y],\n"
    )
    writer = csv.writer(buffer, lineterminator="\n")
    for plan in plans:
        labels = "|".join(plan.findings) or NO_FINDING
        age, sex = 30 + plan.patient % 50, "MF"[plan.patient % 2]
        writer.writerow([plan.name, labels, plan.follow_up, plan.patient, age, sex, plan.view, 128, 128, 2.7, 2.7, ""])
    return buffer.getvalue()


def _settings(patients: int, seed: int) -> dict[str, Any]:
    return {"format_version": FORMAT_VERSION, "patients": patients, "seed": seed, "image_size": IMAGE_SIZE}


def make_demo_cxr(output_dir: str | Path, patients: int = DEMO_PATIENTS, seed: int = 0) -> Path:
    """Write the demo release into ``output_dir`` and convert it; returns the path of ``datalist.json``.

    ``output_dir`` then holds the release (``Data_Entry_2017.csv``, the two lists, ``images_001/images/``),
    the converter's ``datalist.json`` and ``pretraining.json`` (60 % of the train-val patients pretrain, 20 %
    of the others validate) and ``demo_cxr.json`` (the settings and every :class:`DemoImage`), written last,
    so its presence means the set is complete.
    """
    output_dir = Path(output_dir)
    plans = plan_images(patients, seed)
    sources = {name: load_source(name) for name in SOURCES}
    folder = output_dir / "images_001" / "images"
    folder.mkdir(parents=True, exist_ok=True)
    for plan in plans:
        _write_png(folder / plan.name, render_image(plan, sources[plan.source]))
    atomic_save_text(_data_entry(plans), output_dir / CSV_NAME)
    atomic_save_text("".join(f"{p.name}\n" for p in plans if not p.test), output_dir / TRAIN_VAL_LIST)
    atomic_save_text("".join(f"{p.name}\n" for p in plans if p.test), output_dir / TEST_LIST)
    datalist, _ = convert_release(output_dir, pretrain_fraction=0.6, val_fraction=0.2, seed=seed)
    record = {**_settings(patients, seed), "images": [asdict(p) for p in plans]}
    atomic_save_text(json.dumps(record, indent=1) + "\n", output_dir / "demo_cxr.json")
    return datalist


def demo_cxr_dir(output_dir: str | Path, patients: int = DEMO_PATIENTS, seed: int = 0) -> str:
    """``output_dir`` holding the demo set, generated by :func:`make_demo_cxr` unless already there with the same
    settings. Returns the folder as a string, for a bundle's ``dataset_dir``."""
    output_dir = Path(output_dir)
    record_path = output_dir / "demo_cxr.json"
    wanted = _settings(patients, seed)
    if record_path.is_file():
        record = json.loads(record_path.read_text())
        if {k: record.get(k) for k in wanted} == wanted and (output_dir / "datalist.json").is_file():
            return str(output_dir)
    make_demo_cxr(output_dir, patients, seed)
    return str(output_dir)
