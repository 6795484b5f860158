"""Draw the ChestX-ray14 CPU demo's figure from two evaluations of ``voco_cxr14_cls`` (pretrained and from scratch).

Left: one test image per finding (the first on the test list that has it), titled with the finding and the
probability each model gives it. Right: the per-finding test AUC of both models, findings without an AUC
(no positive test image) marked.

Usage: ``python tools/plot_cxr14_demo.py --pretrained <eval dir> --scratch <eval dir> --out <png>``, where an eval
dir holds the ``metrics.json`` and ``predictions.json`` of ``evaluate.json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "bundles" / "voco_cxr14_cls" / "docs" / "cpu_demo_findings.png"


def load(folder: Path) -> tuple[dict, list[dict]]:
    metrics = json.loads((folder / "metrics.json").read_text())
    return metrics, json.loads((folder / "predictions.json").read_text())["images"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--pretrained", type=Path, required=True)
    parser.add_argument("--scratch", type=Path, required=True)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    runs = {"VoCo": load(args.pretrained), "scratch": load(args.scratch)}
    metrics, images = runs["VoCo"]
    findings = [row["class"] for row in metrics["classes"]]
    scratch = {Path(row["image"]).name: row for row in runs["scratch"][1]}  # each run may have its own demo copy

    figure = plt.figure(figsize=(15, 7.2), layout="constrained")
    left, right = figure.subfigures(1, 2, width_ratios=[1.45, 1])
    axes = left.subplots(3, 5)
    for ax in axes.flat:
        ax.axis("off")
    for ax, finding in zip(axes.flat, findings, strict=False):
        row = next((r for r in images if r["labels"][finding] == 1), None)
        if row is None:
            ax.set_title(f"{finding}\n(no test image)", fontsize=8)
            continue
        ax.imshow(np.asarray(Image.open(row["image"])), cmap="gray")
        p_voco, p_scratch = row["probabilities"][finding], scratch[Path(row["image"]).name]["probabilities"][finding]
        ax.set_title(f"{finding}\nVoCo {p_voco:.2f} / scratch {p_scratch:.2f}", fontsize=8)
    left.suptitle("one test image per finding: the probability each model gives it", fontsize=10)

    ax = right.subplots()
    positions = np.arange(len(findings))
    for offset, (name, (run_metrics, _)) in zip((-0.2, 0.2), runs.items(), strict=True):
        aucs = [row["auc"] if row["auc"] is not None else np.nan for row in run_metrics["classes"]]
        label = f"{name} (mean {run_metrics['mean_auc']:.3f})"
        ax.barh(positions + offset, np.nan_to_num(aucs, nan=0.0), height=0.4, label=label)
    for i, row in enumerate(metrics["classes"]):
        if row["auc"] is None:
            ax.text(0.51, i, "no AUC: no positive test image", va="center", fontsize=7)
    ax.axvline(0.5, color="grey", linewidth=0.8, linestyle="--")
    ax.set_yticks(positions, findings, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0.3, 1.0)
    ax.set_xlabel("test AUC")
    ax.legend(loc="lower right", fontsize=8)
    right.suptitle(f"per-finding AUC on the {metrics['num_images']} test images", fontsize=10)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(args.out, dpi=90)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
