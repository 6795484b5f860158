"""Pretraining ablations on the CPU demo: one setting changed at a time, each trained and evaluated from scratch.

Usage::

    python tools/pretrain_ablation.py --out ablation/ --runs quick_start crop_augmentation crops_4
    python tools/pretrain_ablation.py --out ablation/ --table    # the markdown table of the finished runs
    python tools/pretrain_ablation.py --out ablation/ --curves   # held-out validations of every run, stopped ones too

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

from plot_pretrain_curves import read_scalars

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "voco_pretrain" / "configs"
CROP_AUGMENTATION = {"crop_flip_prob": 0.2, "crop_rot90_prob": 0.2, "crop_shift_intensity_prob": 0.1}
"""``train.json``'s per-crop flips, 90-degree turns and intensity shifts, which ``cpu_demo.json`` switches off."""
EARLIER_DEMO = {**CROP_AUGMENTATION, "num_crops": 4}
"""The CPU demo before it changed: crop augmentation on, 4 random crops per volume."""
RUNS: dict[str, dict] = {
    "quick_start": {},
    "crop_augmentation": CROP_AUGMENTATION,
    "crops_4": {"num_crops": 4},
    "crops_4_steps_80": {"num_crops": 4, "max_steps": 80},
    "crops_4_steps_240": {"num_crops": 4, "max_steps": 240},
    "crops_16": {"num_crops": 16},
    "earlier_demo": EARLIER_DEMO,
    "earlier_demo_lr_1e-4": {**EARLIER_DEMO, "learning_rate": 1e-4},
    "earlier_demo_lr_3e-4": {**EARLIER_DEMO, "learning_rate": 3e-4},
    "earlier_demo_region_jitter": {**EARLIER_DEMO, "region_min_scale": [0.6, 0.6, 1.0]},
    "earlier_demo_lr_1e-4_steps_360": {
        **EARLIER_DEMO,
        "learning_rate": 1e-4,
        "max_steps": 360,
        "val_every_steps": 60,
        "checkpoint_interval": 60,
    },
    "earlier_demo_batch_1_steps_240": {**EARLIER_DEMO, "batch_size": 1, "max_steps": 240},
    "roi_64": {"roi_size": [64, 64, 64], "region_size": [256, 256, 64]},
    "warmup_40": {"warmup_steps": 40},
    "batch_4": {"batch_size": 4},
    "projector_eval_bn": {"projector_batch_stats": False},
}
"""Named override sets against the CPU demo (``cpu_demo.json``)."""
SPLITS = {"validation": "metrics.json", "training": "metrics_training.json"}
REPORTED = ("position_top1", "position_auc", "position_mae")
TOP1, AUC = "val_position_top1", "val_position_auc"
DEMO_VAL_EVERY_STEPS = json.loads((CONFIGS / "cpu_demo.json").read_text())["val_every_steps"]


def _config_files(*names: str) -> str:
    return "[" + ",".join(f"'{CONFIGS / name}'" for name in names) + "]"


def _overrides(settings: dict) -> list[str]:
    """``--key=value`` with Python literals: ``monai.bundle``'s command line (fire) reads ``False`` as a bool but
    ``false`` as the (truthy) string 'false'."""
    return [f"--{key}={value!r}".replace(" ", "") for key, value in settings.items()]


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


def describe(settings: dict) -> str:
    """The overrides of a run, with the earlier demo's and the crop augmentation's settings named, not listed."""
    parts, rest = [], dict(settings)
    for label, group in (("the earlier demo", EARLIER_DEMO), ("crop augmentation", CROP_AUGMENTATION)):
        if all(rest.get(key) == value for key, value in group.items()):
            parts.append(label)
            rest = {key: value for key, value in rest.items() if key not in group}
    parts += [f"`{key}={value!r}`" for key, value in rest.items()]
    return ", ".join(parts) or "(cpu_demo.json)"


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

        overrides = describe(settings)
        cells = [change(held, key) for key in REPORTED] + [change(seen, key) for key in REPORTED[:2]]
        lines.append(f"| {name} | {overrides} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def curves(out: Path) -> str:
    """Markdown table: the held-out top-1 and AUC at every validation (TensorBoard), for every run that wrote any.

    Step 0 is the initialisation (from ``metrics.json`` when the run finished); a stopped run lists what it
    reached.
    """
    lines = ["| run | validated at steps | held-out top-1 | held-out AUC |", "|---|---|---|---|"]
    for name, settings in RUNS.items():
        events = out / name / "tensorboard"
        if not events.is_dir():
            continue
        scalars = read_scalars(events)
        if TOP1 not in scalars:
            continue
        every = settings.get("val_every_steps", DEMO_VAL_EVERY_STEPS)
        epochs, top1 = scalars[TOP1]
        auc = scalars[AUC][1] if AUC in scalars else []
        steps = [str(int(e) * every) for e in epochs]
        top1_cells, auc_cells = [f"{v:.3f}" for v in top1], [f"{v:.3f}" for v in auc]
        held = out / name / "eval" / SPLITS["validation"]
        if held.is_file():
            init = json.loads(held.read_text())
            steps, top1_cells = ["0", *steps], [f"{init['init_position_top1']:.3f}", *top1_cells]
            auc_cells = [f"{init['init_position_auc']:.3f}", *auc_cells]
        lines.append(f"| {name} | {', '.join(steps)} | {', '.join(top1_cells)} | {', '.join(auc_cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--runs", nargs="*", default=[], choices=sorted(RUNS), help="runs to train and evaluate")
    parser.add_argument("--table", action="store_true", help="print the table of the finished runs")
    parser.add_argument("--curves", action="store_true", help="print every run's held-out validations")
    args = parser.parse_args()
    for name in args.runs:
        run(name, args.out)
    if args.table:
        print(table(args.out))
    if args.curves:
        print(curves(args.out))


if __name__ == "__main__":
    main()
