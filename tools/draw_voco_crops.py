"""Draw the figure that explains VoCo's crops and position labels, from a real CT.

The CT goes through the bundles' preprocessing (``ct_preprocessing``, resized to the VoCo sampling grid:
the 384×384×64 region at the scale of the 64³ crops), then through :class:`VoCoCropd` with a fixed seed.
The figure has three panels:

(a) an axial slice of the sampling grid with the 4×4 base crops, numbered in the order of the position
    labels (index = ix * 4 + iy), and the random crops drawn in colour;
(b) the middle axial slice of each random crop, as the transform outputs it, framed in its colour;
(c) the (k, n) position labels: the fraction of each random crop that overlaps each base crop.

Axial slices are shown with x (RAS: towards the patient's right) to the right and y (towards anterior) up.

Usage: ``python tools/draw_voco_crops.py [--seed 0] [--out bundles/voco_pretrain/docs/voco_crops.png]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.patheffects as path_effects  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes import Axes  # noqa: E402
from matplotlib.colors import to_rgb  # noqa: E402
from matplotlib.figure import Figure, SubFigure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from voco_components.apps.demo import DEMO_DIR
from voco_components.transforms.crops import VoCoCropd
from voco_components.transforms.pipelines import ct_preprocessing

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bundles" / "voco_pretrain" / "docs" / "voco_crops.png"
DEFAULT_IMAGE = DEMO_DIR / "lung1_image.nii.gz"
CROP_COLOURS = ("#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#42d4f4", "#f032e6", "#bfef45")
OUTLINE = [path_effects.withStroke(linewidth=2.0, foreground="black")]


def make_crops(image_path: Path, seed: int, num_crops: int) -> tuple[VoCoCropd, dict]:
    """Preprocess ``image_path`` to the sampling grid and cut it with a seeded :class:`VoCoCropd`.

    Returns:
        the transform (for its region, grid and roi sizes) and its output dict, which also holds the
        sampling-grid volume under ``grid_image``.
    """
    crops = VoCoCropd(keys="image", num_crops=num_crops)
    sampling_shape = tuple(int(s) for s in crops.sampling_shape)
    data = ct_preprocessing(spatial_size=sampling_shape)({"image": str(image_path)})
    crops.set_random_state(seed=seed)
    out = crops(data)
    out["grid_image"] = data["image"]
    return crops, out


def to_pixels(boxes: torch.Tensor, crops: VoCoCropd) -> np.ndarray:
    """Region-coordinate boxes (N, 3, 2) -> sampling-grid voxel boxes (N, 3, 2)."""
    return (boxes.double() * crops.scale[None, :, None]).numpy()


def overlap_fractions(boxes_px: np.ndarray, base_px: np.ndarray) -> np.ndarray:
    """Overlap of each drawn crop box with each drawn base cell, as a fraction of the crop's volume.

    Computed in sampling-grid voxels, independently of :func:`position_labels`, to check the picture.
    """
    lo = np.maximum(boxes_px[:, None, :, 0], base_px[None, :, :, 0])
    hi = np.minimum(boxes_px[:, None, :, 1], base_px[None, :, :, 1])
    volume = np.clip(hi - lo, 0, None).prod(axis=-1)
    return volume / (boxes_px[:, None, :, 1] - boxes_px[:, None, :, 0]).prod(axis=-1)


def show_axial(ax: Axes, slice_xy: np.ndarray) -> None:
    """Show an (x, y) slice with x to the right and y up, one unit per voxel."""
    nx, ny = slice_xy.shape
    ax.imshow(slice_xy.T, cmap="gray", origin="lower", extent=(0, nx, 0, ny), vmin=0.0, vmax=1.0)
    ax.set_xticks([])
    ax.set_yticks([])


def draw_grid_panel(ax: Axes, crops: VoCoCropd, out: dict, z: int) -> None:
    """Panel (a): the sampling-grid slice, the numbered base cells and the random-crop boxes."""
    show_axial(ax, out["grid_image"][0, :, :, z].numpy())
    n = len(crops.base)
    boxes_px = to_pixels(out["voco_boxes"], crops)
    for index, box in enumerate(boxes_px[:n]):
        (x0, x1), (y0, y1) = box[0], box[1]
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", lw=0.8, alpha=0.7))
        ax.text(x0 + 4, y1 - 4, str(index), color="white", fontsize=8, ha="left", va="top", path_effects=OUTLINE)
    for j, box in enumerate(boxes_px[n:]):
        (x0, x1), (y0, y1) = box[0], box[1]
        colour = CROP_COLOURS[j % len(CROP_COLOURS)]
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, lw=2.2))
    nx, ny = boxes_px[:n, 0, 1].max(), boxes_px[:n, 1, 1].max()
    ax.set_xlim(0, nx)
    ax.set_ylim(0, ny)
    ax.set_xlabel("x → patient right", fontsize=8)
    ax.set_ylabel("y → anterior", fontsize=8)


def draw_thumbnails(fig: SubFigure, crops: VoCoCropd, out: dict) -> None:
    """Panel (b): the middle axial slice of each random crop, framed in its box colour."""
    n, k = len(crops.base), crops.num_crops
    cols = int(np.ceil(np.sqrt(k)))
    rows = int(np.ceil(k / cols))
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    z = int(crops.roi_size[2]) // 2
    for j, ax in enumerate(axes):
        if j >= k:
            ax.set_axis_off()
            continue
        show_axial(ax, out["image"][n + j, 0, :, :, z].numpy())
        colour = CROP_COLOURS[j % len(CROP_COLOURS)]
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(3.0)
        ax.set_title(f"crop {j}", fontsize=9, color=colour, fontweight="bold", pad=3)


def draw_labels(ax: Axes, labels: np.ndarray) -> None:
    """Panel (c): the (k, n) position labels, each row shaded in its crop's colour, non-zero values printed."""
    k, n = labels.shape
    rgba = np.zeros((k, n, 4))
    for j in range(k):
        rgba[j, :, :3] = to_rgb(CROP_COLOURS[j % len(CROP_COLOURS)])
        rgba[j, :, 3] = np.where(labels[j] > 0, 0.15 + 0.85 * labels[j], 0.0)  # any overlap stays visible
    ax.imshow(rgba, aspect=1.8, interpolation="nearest")
    for j in range(k):
        for i in range(n):
            value = labels[j, i]
            if value > 0:
                colour = "white" if value > 0.5 else "black"
                ax.text(i, j, f"{value:.2f}", ha="center", va="center", fontsize=7.5, color=colour)
    ax.set_xticks(range(n))
    ax.set_xticklabels([str(i) for i in range(n)], fontsize=8)
    ax.set_yticks(range(k))
    ax.set_yticklabels([f"crop {j}" for j in range(k)], fontsize=9)
    for j, tick in enumerate(ax.get_yticklabels()):
        tick.set_color(CROP_COLOURS[j % len(CROP_COLOURS)])
        tick.set_fontweight("bold")
    ax.set_xticks(np.arange(-0.5, n, 1), minor=True)
    ax.set_yticks(np.arange(-0.5, k, 1), minor=True)
    ax.grid(which="minor", color="#d0d0d0", lw=0.6)
    ax.tick_params(which="both", length=0)
    ax.set_xlabel("base crop index", fontsize=9)


def draw_figure(crops: VoCoCropd, out: dict, z: int, dpi: int) -> Figure:
    """The three-panel figure for one transform output, 1400×500 px at ``dpi``."""
    fig = plt.figure(figsize=(1400 / dpi, 500 / dpi), dpi=dpi, layout="constrained")
    grid_fig, thumb_fig, label_fig = fig.subfigures(1, 3, width_ratios=(1.0, 0.8, 1.5), wspace=0.02)
    grid = "×".join(str(int(g)) for g in crops.grid)
    draw_grid_panel(grid_fig.subplots(), crops, out, z)
    grid_fig.suptitle(f"(a) base crops ({grid} grid), slice z={z}", fontsize=11)
    draw_thumbnails(thumb_fig, crops, out)
    thumb_fig.suptitle("(b) random crops", fontsize=11)
    draw_labels(label_fig.subplots(), out["label"].numpy())
    label_fig.suptitle("(c) position labels y: overlap fraction, rows sum to 1", fontsize=11)
    return fig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="CT volume (default: the demo training CT)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random crops (default: 0)")
    parser.add_argument("--num_crops", type=int, default=4, help="number of random crops (default: 4)")
    parser.add_argument("--slice", type=int, default=None, help="axial slice of panel (a) (default: the middle)")
    parser.add_argument("--dpi", type=int, default=125, help="resolution; the figure is 1400×500 px (default: 125)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"PNG to write (default: {DEFAULT_OUT})")
    args = parser.parse_args()

    crops, out = make_crops(args.image, args.seed, args.num_crops)
    n = len(crops.base)
    z = int(crops.sampling_shape[2]) // 2 if args.slice is None else args.slice
    boxes_px = to_pixels(out["voco_boxes"], crops)
    if not np.allclose(overlap_fractions(boxes_px[n:], boxes_px[:n]), out["label"].numpy(), atol=1e-4):
        raise RuntimeError("the drawn boxes do not reproduce the position labels; the figure would be wrong.")

    fig = draw_figure(crops, out, z, args.dpi)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=args.dpi, facecolor="white")
    plt.close(fig)
    print(f"wrote {args.out}")
    for j, box in enumerate(out["voco_boxes"][n:].tolist()):
        cells = out["label"][j].nonzero().flatten().tolist()
        print(f"crop {j}: region box {box}, overlaps base crops {cells}")


if __name__ == "__main__":
    main()
