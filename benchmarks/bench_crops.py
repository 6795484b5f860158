#!/usr/bin/env python
"""Benchmark the VoCo crop pipeline and loss against the author-code style, in one process.

Run from the repository root::

    python benchmarks/bench_crops.py                 # default sizes, ~1 min on 2 CPU cores
    python benchmarks/bench_crops.py --repeats 50 --json results.json

Three comparisons, each with a target speed-up of ours over the baseline:

1. ``raw``: crops and labels from a raw volume (default 1×250×250×200 float32).
   Ours: ``VoCoCropd(keys="image")`` in its default configuration (region 384×384×64, grid 4×4×1,
   roi 64³, k = 4), which resamples the volume once to the 256×256×64 sampling grid and slices it.
   Baseline (public author code, see docs of the official code §1.1): MONAI ``Resize`` of the volume
   to the 384×384×64 region, then for each of the n + k = 20 boxes a ``SpatialCrop`` and a ``Resize``
   to 64³, stacked, plus the position labels. Target: at least 2×.
2. ``cached``: the training steady state. Ours gets a cached 1×256×256×64 volume (the sampling grid,
   so it only slices); the baseline gets a cached 1×384×384×64 region (per-box crop + resize).
   Target: at least 10×.
3. ``loss``: ``VoCoLoss`` forward + backward vs a per-sample Python loop in the style of the author
   code (per volume, per random crop ``F.cosine_similarity`` against the n bases, the paper's
   -mean log(1 - |y - l|), and a double loop over base pairs i < j of |cos|) at B = 4, k = 4, n = 16,
   C = 2048, float32. Both values (and gradients) are checked to agree before timing. Target: 10×.

Identical boxes. In the default configuration a region unit is 2/3 of a sampling-grid voxel, so
``VoCoCropd`` draws random crops whose region-coordinate starts are multiples of 1.5: an odd
sampling-grid start gives a half-integer region box, which the baseline (cropping the 384 region at
integer voxels) cannot cut. The benchmark therefore uses a subclass of ``VoCoCropd`` whose ``randomize``
snaps each drawn start down to a multiple of ``sampling / gcd(sampling, region)`` (2 on x and y, 1 on
z), i.e. region starts that are multiples of 3. Nothing else changes, the timed work is the same
(crops are still pure slices), and the snapping costs microseconds. Every repeat feeds the boxes that
``VoCoCropd`` wrote to ``box_key`` to the baseline, and the labels the baseline computes with
``position_labels`` from those (integral) boxes are checked to be bit-identical to ``VoCoCropd``'s.
The crop intensities are not identical: both sides sample the raw volume at the same points, but
the baseline interpolates twice (raw -> region -> 64³) and ours once, so the script reports their
difference on the benchmark volume as information only. That the sample points agree is checked on a
linear ramp, which trilinear interpolation reproduces exactly: there the two sides must match to float
precision away from the outermost crop voxels in x and y (where the region's edge clamping differs).

Timing: ``time.perf_counter``, warm-up runs, then the median of ``--repeats`` runs, ours and the
baseline interleaved per repeat; torch's default thread count is left alone and reported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import Resize, SpatialCrop

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # `python benchmarks/bench_crops.py` without installing the package
    sys.path.insert(0, str(REPO_ROOT))

from voco_components.losses.voco import LOG_EPS, VoCoLoss  # noqa: E402
from voco_components.transforms.crops import VoCoCropd  # noqa: E402
from voco_components.transforms.labels import position_labels  # noqa: E402

TARGETS = {"raw": 2.0, "cached": 10.0, "loss": 10.0}
TITLES = {
    "raw": "crops from raw volume",
    "cached": "crops from cached volume",
    "loss": "loss forward+backward",
}


# ----------------------------------------------------------------------------------------------------------------------
# machine and timing helpers
# ----------------------------------------------------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "logical_cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds taken by one call of ``fn`` and its result."""
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


class OtherLoad:
    """How busy the CPUs were with other processes while the benchmark ran (from /proc/stat and getrusage).

    The timings are wall-clock; when other processes share the cores they inflate both sides unevenly.
    """

    def __init__(self) -> None:
        self.start = self._sample()

    @staticmethod
    def _sample() -> tuple[float, float, float] | None:
        try:
            with open("/proc/stat", encoding="utf-8") as f:
                fields = [float(v) for v in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        ticks = os.sysconf("SC_CLK_TCK")
        usage = resource.getrusage(resource.RUSAGE_SELF)
        total = sum(fields[:8]) / ticks  # user nice system idle iowait irq softirq steal, in CPU-seconds
        idle = (fields[3] + fields[4]) / ticks
        return total, total - idle, usage.ru_utime + usage.ru_stime

    def fraction(self) -> float | None:
        """Share of all CPU time, during the run, that other processes (or steal) used; None when unknown."""
        end = self._sample()
        if self.start is None or end is None or end[0] <= self.start[0]:
            return None
        total, busy, own = (e - s for e, s in zip(end, self.start, strict=True))
        return min(1.0, max(0.0, (busy - own) / total))


def summary(seconds: list[float]) -> dict[str, Any]:
    ms = [s * 1e3 for s in seconds]
    quartiles = statistics.quantiles(ms, n=4) if len(ms) > 1 else [ms[0]] * 3
    return {
        "median_ms": statistics.median(ms),
        "p25_ms": quartiles[0],
        "p75_ms": quartiles[2],
        "min_ms": min(ms),
        "max_ms": max(ms),
        "times_ms": ms,
    }


def check(condition: bool, message: str) -> None:
    """Like assert, but not stripped by ``python -O``."""
    if not condition:
        raise AssertionError(message)


# ----------------------------------------------------------------------------------------------------------------------
# crops: ours with integral boxes, and the author-code baseline
# ----------------------------------------------------------------------------------------------------------------------


class IntegralBoxVoCoCropd(VoCoCropd):
    """``VoCoCropd`` whose random crops start at integer region coordinates (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.start_step = torch.tensor(
            [int(s) // math.gcd(int(s), int(r)) for s, r in zip(self.sampling_shape, self.region_size, strict=True)]
        )

    def randomize(self, data: Any = None) -> None:
        super().randomize(data)
        self._starts = self._starts - self._starts % self.start_step  # stays in [0, room]: only rounds down


def ct_like_volume(shape: tuple[int, int, int], generator: torch.Generator) -> MetaTensor:
    """(1, *shape) float32 in [0, 1] like window-normalised CT: smooth structures plus noise (values do not
    change the timings; they only make the reported intensity difference meaningful)."""
    coarse = torch.rand((1, 1, *(max(2, s // 10) for s in shape)), generator=generator)
    smooth = F.interpolate(coarse, size=shape, mode="trilinear")[0]
    noise = 0.03 * torch.randn(smooth.shape, generator=generator)
    return MetaTensor((smooth + noise).clamp(0.0, 1.0))


def baseline_crops(
    region: torch.Tensor, boxes: torch.Tensor, roi_size: tuple[int, ...], region_size: tuple[int, ...], grid
) -> tuple[torch.Tensor, torch.Tensor]:
    """Author-code style: per box a MONAI SpatialCrop of the region and a Resize to ``roi_size``.

    ``boxes`` (n + k, 3, 2) integer region boxes, the n bases first. Returns the (n + k, C, *roi) crops
    and the (k, n) labels of the last k boxes.
    """
    n = math.prod(grid)
    resize = Resize(roi_size, mode="trilinear")
    crops = []
    for box in boxes.tolist():
        starts, ends = [int(a) for a, _ in box], [int(b) for _, b in box]
        crops.append(resize(SpatialCrop(roi_start=starts, roi_end=ends)(region)))
    return torch.stack(crops), position_labels(boxes[n:], region_size, grid)


def loop_position_labels(boxes: torch.Tensor, region_size: tuple[int, ...], grid: tuple[int, ...]) -> torch.Tensor:
    """Independent check of the labels, written like the author code's ``get_position_label``: per crop and
    per base cell, the overlap lengths multiplied, over the crop's volume (the author code does x and y only,
    as its crops span the full depth; this is the same with z added)."""
    cell = [r // g for r, g in zip(region_size, grid, strict=True)]
    labels = []
    for box in boxes.tolist():
        (x0, x1), (y0, y1), (z0, z1) = box
        row = []
        for i in range(grid[0]):
            for j in range(grid[1]):
                for m in range(grid[2]):
                    dx = min((i + 1) * cell[0], x1) - max(i * cell[0], x0)
                    dy = min((j + 1) * cell[1], y1) - max(j * cell[1], y0)
                    dz = min((m + 1) * cell[2], z1) - max(m * cell[2], z0)
                    overlap = dx * dy * dz if dx > 0 and dy > 0 and dz > 0 else 0
                    row.append(overlap / ((x1 - x0) * (y1 - y0) * (z1 - z0)))
        labels.append(row)
    return torch.tensor(labels, dtype=torch.float64)


def integral_boxes(boxes: torch.Tensor) -> torch.Tensor:
    check(bool((boxes == boxes.round()).all()), f"boxes are not integral: {boxes.tolist()}")
    return boxes.round().long()


def _unclamped(
    boxes: torch.Tensor, roi: tuple[int, ...], region: tuple[int, ...], raw: tuple[int, ...]
) -> torch.Tensor:
    """(N, *roi) mask of the crop voxels whose baseline value uses no edge-clamped region voxel.

    Near the region's edges F.interpolate clamps source coordinates, which breaks the linearity of the ramp
    differently for one and for two interpolations; the sample points are compared away from there.
    """
    masks = []
    for axis in range(3):
        start, end = boxes[:, axis, 0, None].double(), boxes[:, axis, 1, None].double()
        p = start + (torch.arange(roi[axis]) + 0.5) * (end - start) / roi[axis] - 0.5  # region voxel coordinate
        first_ok = max(0, math.ceil(0.5 * region[axis] / raw[axis] - 0.5))  # region voxels below map before raw 0
        lo = torch.floor(p)
        masks.append((lo >= first_ok) & (lo + 1 <= region[axis] - 1 - first_ok))  # (N, roi_axis)
    mx, my, mz = masks
    return mx[:, :, None, None] & my[:, None, :, None] & mz[:, None, None, :]


def sampling_point_check(args: argparse.Namespace) -> float:
    """Max |ours - baseline| on a linear ramp volume away from the region edges: float error when both sample
    the same points (trilinear interpolation of a linear function is exact, so two interpolations equal one).
    NaN when the sizes leave no voxel to compare."""
    raw_shape = tuple(args.raw_shape)
    axes = [torch.arange(s, dtype=torch.float32) / s for s in raw_shape]
    ramp = (0.5 * axes[0][:, None, None] + 0.3 * axes[1][None, :, None] + 0.2 * axes[2][None, None, :])[None]
    transform = IntegralBoxVoCoCropd(keys="image", num_crops=args.num_crops)
    transform.set_random_state(seed=args.seed)
    out = transform({"image": ramp})
    region_size = tuple(int(r) for r in transform.region_size)
    roi_size = tuple(int(r) for r in transform.roi_size)
    region = Resize(region_size, mode="trilinear")(ramp)
    boxes = integral_boxes(out[transform.box_key])
    crops, _ = baseline_crops(region, boxes, roi_size, region_size, tuple(int(g) for g in transform.grid))
    mask = _unclamped(boxes, roi_size, region_size, raw_shape)
    if not bool(mask.any()):
        return float("nan")
    diff = (out["image"] - crops.as_tensor()).abs()[:, 0][mask]
    worst = float(diff.max())
    check(worst < 1e-5, f"ours and the baseline do not sample the same points: max |diff| {worst} on a ramp")
    return worst


def bench_crops(
    name: str,
    image: torch.Tensor,
    baseline_input: Callable[[], torch.Tensor],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """Interleave ``VoCoCropd`` on ``image`` and the baseline on ``baseline_input()`` with the same boxes."""
    transform = IntegralBoxVoCoCropd(keys="image", num_crops=args.num_crops)
    transform.set_random_state(seed=args.seed)
    region_size = tuple(int(r) for r in transform.region_size)
    grid = tuple(int(g) for g in transform.grid)
    roi_size = tuple(int(r) for r in transform.roi_size)
    ours_times: list[float] = []
    base_times: list[float] = []
    max_diff = mean_diff = 0.0
    ramp_diff = sampling_point_check(args)
    n = math.prod(grid)
    for repeat in range(args.warmup + args.repeats):
        t_ours, out = timed(lambda: transform({"image": image}))
        boxes = integral_boxes(out[transform.box_key])
        t_base, (crops, labels) = timed(
            lambda boxes=boxes: baseline_crops(baseline_input(), boxes, roi_size, region_size, grid)
        )
        check(
            tuple(out["image"].shape) == tuple(crops.shape),
            f"{name}: crop shapes differ: ours {tuple(out['image'].shape)}, baseline {tuple(crops.shape)}",
        )
        check(
            torch.equal(out[transform.label_key], labels),
            f"{name}: labels differ for identical boxes at repeat {repeat}",
        )
        check(
            torch.allclose(labels.double(), loop_position_labels(boxes[n:], region_size, grid), rtol=0, atol=1e-7),
            f"{name}: labels differ from the author-style overlap formula at repeat {repeat}",
        )
        diff = (out["image"] - (crops.as_tensor() if isinstance(crops, MetaTensor) else crops)).abs()
        max_diff = max(max_diff, float(diff.max()))
        mean_diff = max(mean_diff, float(diff.mean()))
        if repeat >= args.warmup:
            ours_times.append(t_ours)
            base_times.append(t_base)
    return {
        "paired_speedup": statistics.median(b / o for b, o in zip(base_times, ours_times, strict=True)),
        "name": name,
        "ours": summary(ours_times),
        "baseline": summary(base_times),
        "checks": {
            "boxes_per_call": int(out[transform.box_key].shape[0]),
            "labels_identical_all_repeats": True,
            "labels_match_author_formula": True,
            "ramp_interior_max_abs_diff": ramp_diff,
            "crop_max_abs_diff": max_diff,
            "crop_worst_mean_abs_diff": mean_diff,
        },
    }


# ----------------------------------------------------------------------------------------------------------------------
# loss: VoCoLoss vs a per-sample Python loop in the author-code style
# ----------------------------------------------------------------------------------------------------------------------


def loop_voco_loss(
    random_feats: torch.Tensor, base_feats: torch.Tensor, labels: torch.Tensor, lambda_reg: float = 1.0
) -> torch.Tensor:
    """The paper's L_pred + lambda * L_reg, written as the author code loops (per volume, per crop, per pair).

    ``1 - |y - l|`` is clamped at ``LOG_EPS`` like ``VoCoLoss`` so both stay finite for cosines below 0.
    """
    batch, k, _ = random_feats.shape
    n = base_feats.shape[1]
    pred = 0.0
    for b in range(batch):
        bases = base_feats[b].detach()  # stop-gradient on the bases in the prediction term
        for j in range(k):
            logits = F.cosine_similarity(random_feats[b, j].unsqueeze(0), bases, dim=1)  # (n,)
            distance = (labels[b, j] - logits).abs()
            pred = pred - torch.log((1.0 - distance).clamp_min(LOG_EPS)).mean()
    pred = pred / (batch * k)
    reg = 0.0
    for b in range(batch):
        total, count = 0.0, 0
        for i in range(n):
            for j in range(i + 1, n):
                total = total + F.cosine_similarity(base_feats[b, i], base_feats[b, j], dim=0).abs()
                count += 1
        reg = reg + total / count
    reg = reg / batch
    return pred + lambda_reg * reg


def bench_loss(args: argparse.Namespace) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(args.seed)
    transform = IntegralBoxVoCoCropd(keys="image", num_crops=args.num_crops)
    transform.set_random_state(seed=args.seed)
    labels = []
    for _ in range(args.loss_batch):  # real position labels of k random crops per volume
        transform.randomize()
        labels.append(position_labels(transform.random_boxes(), transform.region_size, transform.grid))
    labels = torch.stack(labels)
    n = labels.shape[-1]
    shape_r, shape_b = (args.loss_batch, args.num_crops, args.loss_channels), (args.loss_batch, n, args.loss_channels)
    random_feats = torch.randn(shape_r, generator=generator).requires_grad_()
    base_feats = torch.randn(shape_b, generator=generator).requires_grad_()
    vectorised = VoCoLoss()

    def step(loss_fn: Callable[..., torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        random_feats.grad = base_feats.grad = None
        loss = loss_fn(random_feats, base_feats, labels)
        loss.backward()
        return loss.detach(), random_feats.grad, base_feats.grad

    ours_value, ours_grad_r, ours_grad_b = step(vectorised)
    loop_value, loop_grad_r, loop_grad_b = step(loop_voco_loss)
    check(
        torch.allclose(ours_value, loop_value, rtol=1e-5, atol=1e-6),
        f"loss values differ: VoCoLoss {ours_value.item()}, loop {loop_value.item()}",
    )
    check(torch.allclose(ours_grad_r, loop_grad_r, rtol=1e-4, atol=1e-8), "random-crop gradients differ")
    check(torch.allclose(ours_grad_b, loop_grad_b, rtol=1e-4, atol=1e-8), "base-crop gradients differ")
    ours_times: list[float] = []
    loop_times: list[float] = []
    for repeat in range(args.warmup + args.repeats):
        t_ours, _ = timed(lambda: step(vectorised))
        t_loop, _ = timed(lambda: step(loop_voco_loss))
        if repeat >= args.warmup:
            ours_times.append(t_ours)
            loop_times.append(t_loop)
    return {
        "paired_speedup": statistics.median(b / o for b, o in zip(loop_times, ours_times, strict=True)),
        "name": "loss",
        "ours": summary(ours_times),
        "baseline": summary(loop_times),
        "checks": {
            "shapes": {"B": args.loss_batch, "k": args.num_crops, "n": n, "C": args.loss_channels},
            "loss_vectorised": ours_value.item(),
            "loss_loop": loop_value.item(),
            "loss_abs_diff": abs(ours_value.item() - loop_value.item()),
            "grad_max_abs_diff": max(
                float((ours_grad_r - loop_grad_r).abs().max()), float((ours_grad_b - loop_grad_b).abs().max())
            ),
        },
    }


# ----------------------------------------------------------------------------------------------------------------------
# main
# ----------------------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=30, help="timed runs per side (median reported); default 30")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs per side first; default 5")
    parser.add_argument(
        "--raw-shape",
        type=int,
        nargs=3,
        default=(250, 250, 200),
        metavar=("X", "Y", "Z"),
        help="spatial shape of the raw volume (1 channel); default 250 250 200",
    )
    parser.add_argument("--num-crops", type=int, default=4, help="k random crops per volume; default 4")
    parser.add_argument("--loss-batch", type=int, default=4, help="B for the loss benchmark; default 4")
    parser.add_argument("--loss-channels", type=int, default=2048, help="C for the loss benchmark; default 2048")
    parser.add_argument(
        "--only",
        nargs="+",
        choices=sorted(TARGETS),
        default=sorted(TARGETS),
        help="run a subset of the benchmarks",
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch.set_num_threads(N) first (DataLoader workers use 1); default: leave torch's default",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")
    parser.add_argument("--strict", action="store_true", help="exit with status 1 when a target is missed")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.repeats < 1 or args.warmup < 0:
        parser.error("--repeats must be at least 1 and --warmup at least 0")
    return args


def print_report(
    machine: dict[str, Any], args: argparse.Namespace, results: list[dict[str, Any]], other_load: float | None
) -> None:
    print("VoCo crop pipeline and loss benchmark (benchmarks/bench_crops.py)")
    print(f"  CPU: {machine['cpu']}, {machine['logical_cores']} logical cores")
    print(
        f"  torch {machine['torch']} (torch threads: {machine['torch_threads']}), monai {machine['monai']}, "
        f"python {machine['python']}"
    )
    print(
        f"  raw volume 1x{'x'.join(map(str, args.raw_shape))} float32, k={args.num_crops}, "
        f"loss B={args.loss_batch} C={args.loss_channels}; median of {args.repeats} runs after {args.warmup} warm-up"
    )
    print()
    header = f"{'benchmark':<27}{'ours ms':>10}{'baseline ms':>13}{'speed-up':>10}{'paired':>8}{'target':>8}  result"
    print(header)
    print("-" * len(header))
    for r in results:
        print(
            f"{TITLES[r['name']]:<27}{r['ours']['median_ms']:>10.2f}{r['baseline']['median_ms']:>13.2f}"
            f"{r['speedup']:>9.1f}x{r['paired_speedup']:>7.1f}x{r['target']:>7.0f}x  "
            f"{'PASS' if r['passed'] else 'FAIL'}"
        )
    print("ms: median per call; speed-up: baseline median / ours median (PASS when >= target);")
    print("paired: median over repeats of baseline / ours, each pair run back to back")
    if other_load is not None:
        note = "" if other_load < 0.1 else "  WARNING: the cores were shared, timings are inflated and noisy"
        print(f"other processes used {100 * other_load:.0f}% of the CPU time during the run{note}")
    print()
    print("checks (all passed before the numbers above were kept):")
    for r in results:
        c = r["checks"]
        if r["name"] == "loss":
            print(
                f"  loss: VoCoLoss {c['loss_vectorised']:.6f} vs loop {c['loss_loop']:.6f} "
                f"(|diff| {c['loss_abs_diff']:.1e}, max grad diff {c['grad_max_abs_diff']:.1e})"
            )
        else:
            pad = " " * (len(r["name"]) + 4)
            print(
                f"  {r['name']}: {c['boxes_per_call']} identical integral boxes per call; labels bit-identical in "
                "every run and equal to the author-style overlap loop"
            )
            print(
                f"{pad}same sample points: ramp, max diff away from region edges {c['ramp_interior_max_abs_diff']:.1e}"
            )
            print(
                f"{pad}intensity diff on the benchmark volume (one vs two interpolations): "
                f"max {c['crop_max_abs_diff']:.3f}, mean {c['crop_worst_mean_abs_diff']:.4f}"
            )


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    machine = machine_info()
    load = OtherLoad()
    generator = torch.Generator().manual_seed(args.seed)
    raw = ct_like_volume(tuple(args.raw_shape), generator)
    region_shape = (384, 384, 64)
    results = []
    if "raw" in args.only:
        region_resize = Resize(region_shape, mode="trilinear")
        results.append(bench_crops("raw", raw, lambda: region_resize(raw), args))
    if "cached" in args.only:
        cached_grid = MetaTensor(F.interpolate(raw.as_tensor()[None], size=(256, 256, 64), mode="trilinear")[0])
        cached_region = Resize(region_shape, mode="trilinear")(raw)
        results.append(bench_crops("cached", cached_grid, lambda: cached_region, args))
    if "loss" in args.only:
        results.append(bench_loss(args))
    for r in results:
        r["target"] = TARGETS[r["name"]]
        r["speedup"] = r["baseline"]["median_ms"] / r["ours"]["median_ms"]
        r["passed"] = r["speedup"] >= r["target"]
    other_load = load.fraction()
    print_report(machine, args, results, other_load)
    if args.json is not None:
        settings = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items() if k != "json"}
        payload = {
            "machine": machine,
            "settings": settings,
            "other_process_cpu_fraction": other_load,
            "results": results,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"\nwrote {args.json}")
    return 1 if args.strict and not all(r["passed"] for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
