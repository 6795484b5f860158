"""Draw the segmentation CPU demo's result: the held-out demo CT, its derived labels and the prediction.

Usage (after the demo's training and inference commands of bundles/voco_btcv_seg/docs/README.md):
``python tools/plot_seg_demo.py [--prediction bundles/voco_btcv_seg/outputs/predictions/lung2_image_seg.nii.gz]``.
Writes ``bundles/voco_btcv_seg/docs/cpu_demo_prediction.png``: one axial and one coronal slice.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "voco_components" / "demo_data"
BUNDLE = REPO / "bundles" / "voco_btcv_seg"
NAMES = ("lungs", "bone", "soft tissue")
COLOURS = ListedColormap([(0, 0, 0, 0), (0.2, 0.6, 1.0, 0.5), (1.0, 0.9, 0.2, 0.6), (1.0, 0.3, 0.3, 0.25)])


def _slices(volume: np.ndarray, axial: int, coronal: int) -> list[np.ndarray]:
    return [volume[:, :, axial].T, volume[:, coronal, :].T]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    default_prediction = BUNDLE / "outputs" / "predictions" / "lung2_image_seg.nii.gz"
    parser.add_argument("--prediction", type=Path, default=default_prediction)
    parser.add_argument("--output", type=Path, default=BUNDLE / "docs" / "cpu_demo_prediction.png")
    args = parser.parse_args()
    image = np.asarray(nib.load(str(DEMO / "lung2_image.nii.gz")).dataobj, dtype=np.float32)
    truth = np.asarray(nib.load(str(DEMO / "lung2_anatomy.nii.gz")).dataobj)
    prediction = np.asarray(nib.load(str(args.prediction)).dataobj)
    if prediction.shape != image.shape:
        raise ValueError(f"{args.prediction}: shape {prediction.shape} differs from the CT's {image.shape}.")
    axial, coronal = image.shape[2] // 2, int(np.argmax((truth == 1).sum(axis=(0, 2))))
    zoom = nib.load(str(DEMO / "lung2_image.nii.gz")).header.get_zooms()
    aspects = [zoom[1] / zoom[0], zoom[2] / zoom[0]]
    figure, axes = plt.subplots(2, 3, figsize=(11, 7.5))
    titles = ("CT (HU -175..250)", "derived labels", "prediction")
    rows = zip(*(_slices(v, axial, coronal) for v in (image, truth, prediction)), strict=True)
    for row, (ct, lab, pred) in enumerate(rows):
        for column, overlay in enumerate((None, lab, pred)):
            axis = axes[row, column]
            axis.imshow(ct, cmap="gray", vmin=-175, vmax=250, origin="lower", aspect=aspects[row])
            if overlay is not None:
                axis.imshow(overlay, cmap=COLOURS, vmin=0, vmax=3, origin="lower", aspect=aspects[row])
            axis.set_title(titles[column] if row == 0 else "")
            axis.axis("off")
    handles = [plt.Rectangle((0, 0), 1, 1, color=COLOURS(i + 1)) for i in range(len(NAMES))]
    figure.legend(handles, NAMES, loc="lower center", ncol=3)
    figure.suptitle("voco_btcv_seg CPU demo: held-out lung2, axial and coronal")
    figure.tight_layout(rect=(0, 0.05, 1, 0.96))
    figure.savefig(args.output, dpi=80)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
