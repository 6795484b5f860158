"""Draw the segmentation CPU demo's result: the held-out demo slab, its organ map and the prediction.

Usage (after the demo's training and inference commands of bundles/voco_btcv_seg/docs/README.md):
``python tools/plot_seg_demo.py [--prediction <outputs/predictions/upper_abdomen_image_seg.nii.gz>]``.
Writes ``bundles/voco_btcv_seg/docs/cpu_demo_prediction.png``: one axial and one coronal slice.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "voco_components" / "apps" / "demo_data"
BUNDLE = REPO / "bundles" / "voco_btcv_seg"
CASE = json.loads((DEMO / "organs_datalist.json").read_text())["validation"][0]
NAMES = json.loads((DEMO / "organs_datalist.json").read_text())["labels"]
COLOURS = ListedColormap([(0, 0, 0, 0), *(plt.get_cmap("tab20")(i)[:3] + (0.6,) for i in range(13))])


def _slices(volume: np.ndarray, axial: int, coronal: int) -> list[np.ndarray]:
    return [volume[:, :, axial].T, volume[:, coronal, :].T]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    stem = CASE["image"].removesuffix(".nii.gz")
    parser.add_argument("--prediction", type=Path, default=BUNDLE / "outputs" / "predictions" / f"{stem}_seg.nii.gz")
    parser.add_argument("--output", type=Path, default=BUNDLE / "docs" / "cpu_demo_prediction.png")
    args = parser.parse_args()
    ct = nib.load(str(DEMO / CASE["image"]))
    image = np.asarray(ct.dataobj, dtype=np.float32)
    truth = np.asarray(nib.load(str(DEMO / CASE["label"])).dataobj)
    prediction = np.asarray(nib.load(str(args.prediction)).dataobj)
    if prediction.shape != image.shape:
        raise ValueError(f"{args.prediction}: shape {prediction.shape} differs from the CT's {image.shape}.")
    axial, coronal = image.shape[2] // 2, int(np.argmax((truth > 0).sum(axis=(0, 2))))
    zoom = ct.header.get_zooms()
    aspects = [zoom[1] / zoom[0], zoom[2] / zoom[0]]
    figure, axes = plt.subplots(2, 3, figsize=(11, 7.5))
    titles = ("CT (HU -175..250)", "organ map (TotalSegmentator)", "prediction")
    rows = zip(*(_slices(v, axial, coronal) for v in (image, truth, prediction)), strict=True)
    for row, (slab, lab, pred) in enumerate(rows):
        for column, overlay in enumerate((None, lab, pred)):
            axis = axes[row, column]
            axis.imshow(slab, cmap="gray", vmin=-175, vmax=250, origin="lower", aspect=aspects[row])
            if overlay is not None:
                axis.imshow(overlay, cmap=COLOURS, vmin=0, vmax=13, origin="lower", aspect=aspects[row])
            axis.set_title(titles[column] if row == 0 else "")
            axis.axis("off")
    present = sorted(set(np.unique(truth).tolist()) - {0})
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLOURS(i)) for i in present]
    figure.legend(handles, [NAMES[str(i)] for i in present], loc="lower center", ncol=4)
    figure.suptitle(f"voco_btcv_seg CPU demo: held-out {stem}, axial and coronal")
    figure.tight_layout(rect=(0, 0.08, 1, 0.96))
    figure.savefig(args.output, dpi=80)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
