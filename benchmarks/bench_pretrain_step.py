"""Time and peak memory of VoCo pretraining steps, with and without gradient checkpointing.

Two measurements, each side of a comparison run by this one script:

* ``--mode step`` (default): one optimiser step of the paper-size network (SwinEncoder feature_size 48 +
  2048-d projector, the paper's VoCoLoss) on ``--volumes`` × (16 + 4) crops of 64³, with
  ``use_checkpoint`` False and True. Each side runs in a fresh subprocess so that its peak resident
  memory (CPU) or peak allocated memory (CUDA) is its own.
* ``--mode attention``: MONAI's window attention against the SDPA one (``voco_components.networks.attention``), and
  SDPA under bfloat16 autocast, in one process on one network (the attention is switched in place between
  steps, sides interleaved, so that both see the same machine load): median step time per side.
  ``--size demo`` is the CPU demo's network (feature_size 12, window 4, 2 × 20 crops of 32³),
  ``--size paper`` the paper's (feature_size 48, window 7, ``--volumes`` × 20 crops of 64³).
* ``--mode demo``: the CPU demo of ``bundles/voco_pretrain`` (train.json + cpu_demo.json) for
  ``--steps`` steps through the real Ignite trainer: mean step time, the share of it spent waiting
  for data, and peak resident memory.

Usage: ``python benchmarks/bench_pretrain_step.py --mode step --volumes 1``, ``--mode demo --steps 20`` or
``--mode attention --size demo --repeats 5``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def _peak_memory_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def one_step(volumes: int, checkpointing: bool, repeats: int, device: torch.device) -> dict:
    """Time ``repeats`` optimiser steps (after one warm-up) of the paper-size network."""
    from voco_components.losses.voco import VoCoLoss
    from voco_components.networks.encoders import SwinEncoder
    from voco_components.networks.voco_net import VoCoNet
    from voco_components.transforms.labels import position_labels

    torch.manual_seed(0)
    net = VoCoNet(SwinEncoder(feature_size=48, use_checkpoint=checkpointing)).to(device)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-2)
    loss_fn = VoCoLoss()
    n, k = 16, 4
    crops = torch.rand(volumes * (n + k), 1, 64, 64, 64, device=device)
    starts = torch.randint(0, 288, (volumes * k, 2)).float()
    boxes = torch.stack(
        (
            torch.stack((starts[:, 0], starts[:, 0] + 96), -1),
            torch.stack((starts[:, 1], starts[:, 1] + 96), -1),
            torch.tensor([[0.0, 64.0]]).expand(volumes * k, 2),
        ),
        dim=1,
    )
    labels = position_labels(boxes, (384, 384, 64), (4, 4, 1)).reshape(volumes, k, n).to(device)
    times = []
    for step in range(repeats + 1):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        features = net(crops).reshape(volumes, n + k, -1)
        loss = loss_fn(features[:, n:], features[:, :n], labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step:
            times.append(time.perf_counter() - start)
    return {"step_s": sum(times) / len(times), "peak_mib": _peak_memory_mib(device)}


ATTENTION_SIZES = {"demo": (12, 4, 32, 512), "paper": (48, 7, 64, 2048)}  # feature size, window, roi, projector


def attention_comparison(size: str, volumes: int, repeats: int, sides: list[str]) -> dict:
    """Median optimiser-step time of each side (``monai``, ``sdpa``, ``sdpa+bf16``), interleaved in one process."""
    import statistics
    from contextlib import nullcontext

    from voco_components.losses.voco import VoCoLoss
    from voco_components.networks.attention import set_window_attention
    from voco_components.networks.encoders import SwinEncoder
    from voco_components.networks.voco_net import VoCoNet

    feature_size, window, roi, projector = ATTENTION_SIZES[size]
    torch.manual_seed(0)
    net = VoCoNet(SwinEncoder(feature_size=feature_size, window_size=window), projector, projector)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-2)
    loss_fn = VoCoLoss()
    crops = torch.rand(volumes * 20, 1, roi, roi, roi)
    labels = torch.softmax(torch.randn(volumes, 4, 16), dim=-1)

    def step(side: str) -> float:
        set_window_attention(net, side.split("+")[0])
        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if side.endswith("+bf16") else nullcontext()
        start = time.perf_counter()
        with autocast:
            features = net(crops).reshape(volumes, 20, -1).float()
        loss = loss_fn(features[:, 16:], features[:, :16], labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {side: [] for side in sides}
    for side in sides:  # warm-up
        step(side)
    for _ in range(repeats):
        for side in sides:
            times[side].append(step(side))
    return {side: {"median_s": statistics.median(t), "times_s": t} for side, t in times.items()}


def demo(steps: int) -> dict:
    """Run the CPU demo config for ``steps`` steps and time data waits inside the Ignite loop."""
    from ignite.engine import Events
    from monai.bundle import ConfigWorkflow

    configs = REPO / "bundles" / "voco_pretrain" / "configs"
    with tempfile.TemporaryDirectory() as root:
        wf = ConfigWorkflow(
            config_file=[str(configs / "train.json"), str(configs / "cpu_demo.json")],
            meta_file=str(configs / "metadata.json"),
            logging_file=False,
            workflow_type="train",
            bundle_root=root,
            max_steps=steps,
            val_every_steps=steps,
            checkpoint_interval=steps,
        )
        wf.initialize()
        trainer = wf.parser.get_parsed_content("train#trainer")
        marks: dict[str, list[float]] = {"get": [], "got": [], "start": [], "end": []}
        for event, key in (
            (Events.GET_BATCH_STARTED, "get"),
            (Events.GET_BATCH_COMPLETED, "got"),
            (Events.ITERATION_STARTED, "start"),
            (Events.ITERATION_COMPLETED, "end"),
        ):
            trainer.add_event_handler(event, lambda _, k=key: marks[k].append(time.perf_counter()))
        wf.run()
    # the first step also fills the preprocessing cache: report it apart
    waits = [b - a for a, b in zip(marks["get"], marks["got"], strict=True)]
    spans = [e - g for g, e in zip(marks["get"], marks["end"], strict=True)]
    return {
        "first_step_s": spans[0],
        "step_s": sum(spans[1:]) / max(1, len(spans) - 1),
        "data_wait_share": sum(waits[1:]) / max(1e-9, sum(spans[1:])),
        "peak_mib": _peak_memory_mib(torch.device("cpu")),
    }


def _machine() -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        names = [ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")]
        cpu = f"{names[0]} ×{len(names)}" if names else cpu
    except OSError:
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu}; {gpu}; torch {torch.__version__}, {torch.get_num_threads()} threads"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=("step", "demo", "attention"), default="step")
    parser.add_argument("--size", choices=tuple(ATTENTION_SIZES), default="demo", help="network of --mode attention")
    parser.add_argument("--sides", nargs="+", default=["monai", "sdpa", "sdpa+bf16"], help="sides of --mode attention")
    parser.add_argument("--volumes", type=int, default=4, help="volumes per step (paper: 4)")
    parser.add_argument("--repeats", type=int, default=2, help="timed steps after one warm-up")
    parser.add_argument("--steps", type=int, default=20, help="demo steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)

    if args.child is not None:  # one side of the comparison, in its own process
        print(json.dumps(one_step(args.volumes, args.child == "on", args.repeats, device)))
        return
    print(f"machine: {_machine()}")
    if args.mode == "attention":
        result = attention_comparison(args.size, args.volumes, args.repeats, args.sides)
        print(
            f"{args.size} size, {args.volumes} × 20 crops, median of {args.repeats} interleaved steps after 1 warm-up"
        )
        load = os.getloadavg()[0]
        shared = " (shared: compare ratios only)" if load > 1.5 else ""
        print(f"1-minute load average {load:.1f} on {os.cpu_count()} cores{shared}")
        print("| attention | step time (s) | vs monai |")
        print("|---|---:|---:|")
        base = result.get("monai", {}).get("median_s")
        for side, row in result.items():
            ratio = f"{base / row['median_s']:.2f}× faster" if base else ""
            print(f"| {side} | {row['median_s']:.2f} | {ratio} |")
        return
    if args.mode == "demo":
        result = demo(args.steps)
        print(
            f"CPU demo, {args.steps} steps: first step {result['first_step_s']:.1f} s (fills the cache), "
            f"then {result['step_s']:.2f} s/step, data wait {100 * result['data_wait_share']:.1f} % of a step, "
            f"peak RSS {result['peak_mib']:.0f} MiB"
        )
        return
    rows = {}
    for side in ("off", "on"):
        cmd = [
            sys.executable,
            __file__,
            "--child",
            side,
            "--volumes",
            str(args.volumes),
            "--repeats",
            str(args.repeats),
            "--device",
            args.device,
        ]
        done = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            rows[side] = {"error": done.stderr.strip().splitlines()[-1] if done.stderr else f"exit {done.returncode}"}
        else:
            rows[side] = json.loads(done.stdout.strip().splitlines()[-1])
    crops = args.volumes * 20
    print(f"paper-size step: feature_size 48, {args.volumes} volumes × (16 + 4) = {crops} crops of 64³, {device}")
    print("| gradient checkpointing | step time (s) | peak memory (MiB) |")
    print("|---|---:|---:|")
    for side, label in (("off", "off (baseline)"), ("on", "on")):
        row = rows[side]
        if "error" in row:
            print(f"| {label} | failed: {row['error']} | |")
        else:
            print(f"| {label} | {row['step_s']:.2f} | {row['peak_mib']:.0f} |")
    if all("error" not in r for r in rows.values()):
        off, on = rows["off"], rows["on"]
        print(
            f"checkpointing: {on['step_s'] / off['step_s']:.2f}× the step time, "
            f"{on['peak_mib'] / off['peak_mib']:.2f}× the peak memory"
        )


if __name__ == "__main__":
    main()
