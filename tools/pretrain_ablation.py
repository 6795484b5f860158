"""Pretraining ablations on the CPU demo: one setting changed at a time, each trained and evaluated from scratch.

Usage::

    python tools/pretrain_ablation.py --out ablation/ --runs baseline lr_3e-4 no_aug
    python tools/pretrain_ablation.py --out ablation/ --table   # the markdown table of the finished runs

Each run trains ``bundles/voco_pretrain`` with ``train.json`` + ``cpu_demo.json`` + its overrides into
``<out>/<name>/``, then evaluates the final and the initial checkpoint twice with ``evaluate.json``: on the
held-out ``validation`` volume and on the ``training`` volumes (a network that ranks crops of its training
volumes well but not of the held-out one memorises). A run whose two ``metrics*.json`` exist is not
repeated. Development tool; the figures go to ``bundles/voco_pretrain/docs/README.md``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "voco_pretrain" / "configs"
RUNS: dict[str, dict] = {
    "baseline": {},
    "region_jitter": {"region_min_scale": [0.6, 0.6, 1.0]},
    "no_aug": {"crop_flip_prob": 0.0, "crop_rot90_prob": 0.0, "crop_shift_intensity_prob": 0.0},
    "lr_3e-4": {"learning_rate": 3e-4},
    "lr_1e-4": {"learning_rate": 1e-4},
    "warmup_40": {"warmup_steps": 40},
    "roi_64": {"roi_size": [64, 64, 64], "region_size": [256, 256, 64]},
    "batch_4": {"batch_size": 4},
    "crops_8": {"num_crops": 8},
    "steps_360": {"max_steps": 360, "checkpoint_interval": 60, "val_every_steps": 60},
    "projector_eval_bn": {"projector_batch_stats": False},
}
"""Named override sets against the CPU demo (``cpu_demo.json``)."""
SPLITS = {"validation": "metrics.json", "training": "metrics_training.json"}
REPORTED = ("position_top1", "position_auc", "position_mae")


def _config_files(*names: str) -> str:
    return "[" + ",".join(f"'{CONFIGS / name}'" for name in names) + "]"


def _overrides(settings: dict) -> list[str]:
    return [f"--{key}={json.dumps(value).replace(' ', '')}" for key, value in settings.items()]


def run(name: str, out: Path) -> None:
    """Train and evaluate run ``name`` into ``out / name`` unless it is complete."""
    root = out / name
    if all((root / "eval" / file).is_file() for file in SPLITS.values()):
        print(f"{name}: done already")
        return
    common = ["--bundle_root", str(REPO / "bundles" / "voco_pretrain"), "--output_dir", str(root)]
    common += ["--cache_dir", str(out / "cache"), "--export_path", str(root / "model.pt"), *_overrides(RUNS[name])]
    start = time.time()
    train = [sys.executable, "-m", "monai.bundle", "run", "training", "--config_file"]
    train += [_config_files("train.json", "cpu_demo.json"), *common, "--existing_checkpoints", "archive"]
    subprocess.run(train, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    seconds = time.time() - start
    for split, file in SPLITS.items():
        evaluate = [sys.executable, "-m", "monai.bundle", "run", "--config_file"]
        evaluate += [_config_files("train.json", "cpu_demo.json", "evaluate.json"), *common]
        evaluate += ["--val_split", split, "--metrics_path", str(root / "eval" / file)]
        subprocess.run(evaluate, check=True, cwd=REPO, stdout=subprocess.DEVNULL)
    (root / "eval" / "train_seconds.txt").write_text(f"{seconds:.0f}\n")
    print(f"{name}: trained in {seconds:.0f} s")


def table(out: Path) -> str:
    """Markdown table: held-out and training-volume metrics at initialisation -> after training, per run."""
    columns = ["run", "overrides", "held-out top-1", "held-out AUC", "held-out \\|l − y\\|", "training top-1"]
    lines = ["| " + " | ".join([*columns, "training AUC"]) + " |", "|---|---|---|---|---|---|---|"]
    for name, settings in RUNS.items():
        files = {split: out / name / "eval" / file for split, file in SPLITS.items()}
        if not all(path.is_file() for path in files.values()):
            continue
        held, seen = (json.loads(files[split].read_text()) for split in SPLITS)

        def change(metrics: dict, key: str) -> str:
            return f"{metrics['init_' + key]:.3f} → {metrics[key]:.3f}"

        overrides = ", ".join(f"`{k}={json.dumps(v)}`" for k, v in settings.items()) or "(cpu_demo.json)"
        cells = [change(held, key) for key in REPORTED] + [change(seen, key) for key in REPORTED[:2]]
        lines.append(f"| {name} | {overrides} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", nargs="*", default=[], choices=sorted(RUNS), help="runs to train and evaluate")
    parser.add_argument("--table", action="store_true", help="print the table of the finished runs")
    args = parser.parse_args()
    for name in args.runs:
        run(name, args.out)
    if args.table:
        print(table(args.out))


if __name__ == "__main__":
    main()
