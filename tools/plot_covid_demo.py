"""Draw the classification demo set: one held-out scan per class with the demo model's class probabilities.

Usage (after the CPU demo's training and evaluation commands of bundles/voco_covid_cls/docs/README.md):
``python tools/plot_covid_demo.py``. Reads ``outputs/demo_data`` and ``outputs/eval/predictions.json`` of
the bundle and writes ``bundles/voco_covid_cls/docs/cpu_demo_cases.png``: per class, the middle slice of the
first held-out scan of each source CT, titled with its true class and predicted probabilities.
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

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "voco_covid_cls"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--predictions", type=Path, default=BUNDLE / "outputs" / "eval" / "predictions.json")
    parser.add_argument("--output", type=Path, default=BUNDLE / "docs" / "cpu_demo_cases.png")
    args = parser.parse_args()
    record = json.loads(args.predictions.read_text())
    names, volumes = record["class_names"], record["volumes"]
    sources = sorted({Path(v["image"]).name.removesuffix(".nii.gz").rsplit("_", 1)[1] for v in volumes})
    figure, axes = plt.subplots(len(sources), len(names), figsize=(3.3 * len(names), 4.0 * len(sources)))
    for column, name in enumerate(names):
        for row, source in enumerate(sources):
            volume = next(v for v in volumes if v["label"] == name and v["image"].endswith(f"_{source}.nii.gz"))
            image = nib.load(volume["image"])
            data = np.asarray(image.dataobj)
            zoom = image.header.get_zooms()
            axis = axes[row, column]
            axis.imshow(data[:, :, data.shape[2] // 2].T, cmap="gray", origin="lower", aspect=zoom[1] / zoom[0])
            scores = " ".join(f"{n} {volume['probabilities'][n]:.2f}" for n in names)
            axis.set_title(f"true {name}, predicted {volume['prediction']}\n{scores}", fontsize=9)
            axis.axis("off")
    figure.suptitle("voco_covid_cls CPU demo: held-out synthetic scans (8-bit lung window), middle slice")
    figure.tight_layout(rect=(0, 0, 1, 0.95), h_pad=3.0)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.output, dpi=72)
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
