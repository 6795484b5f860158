"""Plot the training and held-out curves of one or more voco_pretrain runs from their TensorBoard logs.

Each run is a bundle root whose training wrote ``<root>/outputs/tensorboard``. The tags are those of
MONAI's ``TensorBoardStatsHandler`` in ``configs/train.json``:

- training handler (dict output, one scalar per key, step = iteration): ``loss`` and its terms
  (``loss_pred``, ``loss_reg``; ``loss_pos``, ``loss_neg``, ``loss_reg`` for the teacher variants);
  the handler's ``tag_name="train"`` is only used for scalar outputs, so no tag is called ``train``;
- validation handler (evaluator metrics, step = trainer epoch, one epoch = ``val_every_steps``
  iterations): ``val_position_top1``, ``val_position_auc``, ``val_position_mae``, ``val_effective_rank``,
  ``val_chance_top1``, ``val_num_random_crops``.

The figure has four panels against the training step: the training loss, the held-out position top-1
accuracy, the held-out position AUC and the held-out mean |l − y|. When ``<root>/outputs/eval/metrics.json``
exists (written by ``configs/evaluate.json``), its ``init_`` values are drawn as dashed lines
(the network at initialisation); the chance top-1 is a dotted grey line. A markdown table of the initial
and final values is printed.

Usage: ``python tools/plot_pretrain_curves.py --run paper=runs/paper --run v2=runs/v2
--val_every_steps 1000 --out curves.png``.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator  # noqa: E402

TOP1_TAG = "val_position_top1"
MAE_TAG = "val_position_mae"
AUC_TAG = "val_position_auc"
CHANCE_TAG = "val_chance_top1"
RUN_COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")


@dataclass
class Run:
    """The scalars of one run: tag -> (steps, values), sorted by step, and its evaluation metrics."""

    label: str
    root: Path
    scalars: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)


def parse_run(text: str) -> tuple[str, Path]:
    """``LABEL=PATH`` -> (label, path); a bare PATH is labelled by its folder name."""
    label, sep, path = text.partition("=")
    if not sep:
        return Path(text).name, Path(text)
    if not label or not path:
        raise argparse.ArgumentTypeError(f"expected LABEL=PATH, got {text!r}.")
    return label, Path(path)


def event_dir(root: Path) -> Path:
    """The TensorBoard folder of a bundle root (``outputs/tensorboard``), or ``root`` itself if it holds events."""
    candidate = root / "outputs" / "tensorboard"
    if candidate.is_dir():
        return candidate
    if any(root.glob("events.out.tfevents.*")):
        return root
    raise FileNotFoundError(f"{root}: no outputs/tensorboard folder and no event files here.")


def read_scalars(folder: Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All scalars of every event file under ``folder`` (the trainer and evaluator each write one).

    Every point is kept (no reservoir sampling). When a step was written twice (a resumed run), the
    later write wins.
    """
    points: dict[str, list[tuple[float, int, float]]] = {}
    files = sorted(folder.rglob("events.out.tfevents.*"))
    if not files:
        raise FileNotFoundError(f"{folder}: no TensorBoard event files.")
    for path in files:
        acc = event_accumulator.EventAccumulator(str(path), size_guidance={event_accumulator.SCALARS: 0})
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            points.setdefault(tag, []).extend((e.wall_time, e.step, e.value) for e in acc.Scalars(tag))
    scalars = {}
    for tag, events in points.items():
        by_step = {step: value for _, step, value in sorted(events)}
        steps = np.array(sorted(by_step), dtype=np.int64)
        scalars[tag] = (steps, np.array([by_step[s] for s in steps], dtype=np.float64))
    return scalars


def read_metrics(root: Path) -> dict[str, float]:
    """``<root>/outputs/eval/metrics.json`` (numbers only), or an empty dict when there is none."""
    path = root / "outputs" / "eval" / "metrics.json"
    if not path.is_file():
        return {}
    content = json.loads(path.read_text())
    return {k: float(v) for k, v in content.items() if isinstance(v, (int, float))}


def ema(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard-style debiased exponential moving average; ``weight`` 0 returns the values."""
    if weight <= 0 or len(values) == 0:
        return values
    out = np.empty_like(values)
    last, norm = 0.0, 0.0
    for i, value in enumerate(values):
        last = weight * last + (1 - weight) * value
        norm = weight * norm + (1 - weight)
        out[i] = last / norm
    return out


def validation_curve(run: Run, tag: str, val_every_steps: int) -> tuple[np.ndarray, np.ndarray] | None:
    """A validation tag against the training step (its TensorBoard step is the trainer epoch)."""
    if tag not in run.scalars:
        return None
    epochs, values = run.scalars[tag]
    return epochs * val_every_steps, values


def run_colour(index: int) -> str:
    """The colour of the ``index``-th run."""
    return RUN_COLOURS[index % len(RUN_COLOURS)]


def plot(runs: list[Run], loss_tag: str, val_every_steps: int, smooth: float, out: Path, dpi: int) -> None:
    """Write the four-panel figure to ``out``."""
    fig, (ax_loss, ax_top1, ax_auc, ax_mae) = plt.subplots(1, 4, figsize=(19, 4.2), dpi=dpi, layout="constrained")
    chance_levels: set[float] = set()
    any_init = False
    for index, run in enumerate(runs):
        colour = run_colour(index)
        if loss_tag in run.scalars:
            steps, values = run.scalars[loss_tag]
            if smooth > 0:
                ax_loss.plot(steps, values, color=colour, alpha=0.25, lw=0.8)
            ax_loss.plot(steps, ema(values, smooth), color=colour, lw=1.6, label=run.label)
        panels = (
            (ax_top1, TOP1_TAG, "init_position_top1"),
            (ax_auc, AUC_TAG, "init_position_auc"),
            (ax_mae, MAE_TAG, "init_position_mae"),
        )
        for ax, tag, init_key in panels:
            curve = validation_curve(run, tag, val_every_steps)
            if curve is not None:
                ax.plot(*curve, color=colour, lw=1.6, marker="o", ms=3, label=run.label)
            if init_key in run.metrics:
                ax.axhline(run.metrics[init_key], color=colour, ls="--", lw=1.1, alpha=0.8)
                any_init = True
        chance = validation_curve(run, CHANCE_TAG, val_every_steps)
        if chance is not None:
            chance_levels.update(round(float(v), 6) for v in chance[1])
        elif "chance_top1" in run.metrics:
            chance_levels.add(round(run.metrics["chance_top1"], 6))
    for level in sorted(chance_levels):
        ax_top1.axhline(level, color="grey", ls=":", lw=1.4)

    name = "loss" if loss_tag == "loss" else f"loss term {loss_tag}"
    ax_loss.set_title(f"training {name}" + (f" (EMA {smooth:g}, raw faint)" if smooth > 0 else ""), fontsize=11)
    ax_top1.set_title("held-out position top-1 accuracy", fontsize=11)
    ax_auc.set_title("held-out position AUC", fontsize=11)
    ax_mae.set_title("held-out mean |l − y|", fontsize=11)
    ax_auc.axhline(0.5, color="grey", ls=":", lw=1.4)
    for ax in (ax_loss, ax_top1, ax_auc, ax_mae):
        ax.set_xlabel("training step")
        ax.grid(alpha=0.3)
    ax_top1.set_ylim(0.0, 1.0)

    handles = [Line2D([], [], color=run_colour(i), lw=1.6, label=run.label) for i, run in enumerate(runs)]
    if any_init:
        handles.append(Line2D([], [], color="black", ls="--", lw=1.1, label="at initialisation"))
    if chance_levels:
        handles.append(Line2D([], [], color="grey", ls=":", lw=1.4, label="chance top-1"))
    ax_top1.legend(handles=handles, fontsize=9, loc="best", framealpha=0.9)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=dpi, facecolor="white")
    plt.close(fig)


def fmt(value: float | None, digits: int = 3) -> str:
    """A table cell: the value, or a dash when unknown."""
    return "–" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def last_value(run: Run, tag: str) -> tuple[int | None, float | None]:
    """The last (step, value) of a tag, or (None, None)."""
    if tag not in run.scalars or len(run.scalars[tag][0]) == 0:
        return None, None
    steps, values = run.scalars[tag]
    return int(steps[-1]), float(values[-1])


def summary_table(runs: list[Run], val_every_steps: int) -> str:
    """Markdown table: per run, the initial (metrics.json) and final (last validation) top-1, AUC and MAE."""
    lines = [
        "| run | final step | top-1 init | top-1 final | chance top-1 | AUC init | AUC final | MAE init | MAE final |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for run in runs:
        epoch, top1 = last_value(run, TOP1_TAG)
        _, mae = last_value(run, MAE_TAG)
        _, auc = last_value(run, AUC_TAG)
        _, chance = last_value(run, CHANCE_TAG)
        step = None if epoch is None else epoch * val_every_steps
        lines.append(
            f"| {run.label} | {'–' if step is None else step} | {fmt(run.metrics.get('init_position_top1'))} | "
            f"{fmt(top1)} | {fmt(chance if chance is not None else run.metrics.get('chance_top1'))} | "
            f"{fmt(run.metrics.get('init_position_auc'))} | {fmt(auc)} | "
            f"{fmt(run.metrics.get('init_position_mae'))} | {fmt(mae)} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--run",
        dest="runs",
        type=parse_run,
        action="append",
        required=True,
        metavar="LABEL=PATH",
        help="a run: its label and bundle root (repeat for several runs)",
    )
    parser.add_argument(
        "--val_every_steps",
        type=int,
        default=1000,
        help="training steps per validation epoch, as in the run's config (default: 1000, train.json)",
    )
    parser.add_argument("--loss_tag", default="loss", help="training scalar to plot (default: loss, the total)")
    parser.add_argument(
        "--smooth", type=float, default=0.9, help="EMA weight for the loss curve, 0 for none (default: 0.9)"
    )
    parser.add_argument("--dpi", type=int, default=100, help="resolution of the PNG (default: 100)")
    parser.add_argument("--out", type=Path, default=Path("pretrain_curves.png"), help="PNG to write")
    args = parser.parse_args()
    if args.val_every_steps < 1:
        parser.error("--val_every_steps must be at least 1.")
    if not 0.0 <= args.smooth < 1.0:
        parser.error("--smooth must lie in [0, 1).")

    runs = []
    for label, root in args.runs:
        try:
            run = Run(label, root, read_scalars(event_dir(root)), read_metrics(root))
        except FileNotFoundError as exc:
            parser.error(str(exc))
        missing = [t for t in (args.loss_tag, TOP1_TAG, MAE_TAG) if t not in run.scalars]
        if missing:
            print(f"warning: {label}: no {', '.join(missing)} in the logs (tags found: {sorted(run.scalars)})")
        last_train, _ = last_value(run, args.loss_tag)
        last_epoch, _ = last_value(run, TOP1_TAG)
        if last_train is not None and last_epoch is not None and last_epoch * args.val_every_steps > last_train:
            print(
                f"warning: {label}: validation epoch {last_epoch} × {args.val_every_steps} steps lies past the last "
                f"training step {last_train}; is --val_every_steps right?"
            )
        runs.append(run)

    plot(runs, args.loss_tag, args.val_every_steps, args.smooth, args.out, args.dpi)
    print(f"wrote {args.out}\n")
    print(summary_table(runs, args.val_every_steps))


if __name__ == "__main__":
    main()
