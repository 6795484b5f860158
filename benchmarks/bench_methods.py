"""Seconds per step and peak memory of every pretraining method of ``voco_pretrain``, side by side.

Each method (``voco``, ``simmim``, ``swin_ssl``, ``simclr``) is built from the bundle's own configs
(``train.json`` [+ ``cpu_demo.json``] + ``methods/<method>.json``): its network, crops or views, batch preparation,
criterion and optimiser, with AMP as the bundle sets it on the device. One step is the batch preparation on the
device, the forward pass, the loss, the backward pass and the optimiser update for ``--volumes`` volumes (the crops
are cut beforehand from a random uint8 volume of the sampling grid, as the data-loader workers would). Every
(method, size) runs in its own subprocess, so that its peak memory (CUDA: peak allocation; CPU: peak resident
set) is its own. The floating-point operations of one step (forward and backward, as
``torch.utils.flop_counter`` counts them) are counted during the untimed warm-up step; at paper size they give the
GPU time of a budget at an assumed sustained throughput (``--tflops``, 100 by default).

Sizes: ``demo`` is the CPU demo (``cpu_demo.json``: feature size 12, 32³ crops, 2 volumes a step); ``paper`` is
``train.json`` (feature size 48, 64³ crops) with ``--volumes`` volumes a step (1 by default; the paper's batch is 4).

Usage: ``python benchmarks/bench_methods.py --sizes demo paper --repeats 3`` (``--methods`` to choose).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "bundles" / "voco_pretrain" / "configs"
METHOD_NAMES = ("voco", "simmim", "swin_ssl", "simclr")


def _peak_memory_mib(device: torch.device) -> float:
    from voco_components.handlers.training_cost import peak_memory_mib

    return peak_memory_mib(device)[0]


def measure(method: str, size: str, volumes: int | None, repeats: int, device: torch.device) -> dict:
    """Median step time (after one warm-up step), peak memory and FLOPs of a step of ``method`` at ``size``."""
    import tempfile

    from monai.bundle import ConfigParser
    from torch.utils.data import default_collate

    from voco_components.engines import autocast_kwargs
    from voco_components.handlers.training_cost import crops_in

    files = [
        CONFIGS / "train.json",
        *([CONFIGS / "cpu_demo.json"] if size == "demo" else []),
        CONFIGS / "methods" / f"{method}.json",
    ]
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    with tempfile.TemporaryDirectory() as root:
        parser.update({"bundle_root": root, "device": f"$torch.device('{device}')", "amp": device.type == "cuda"})
        if volumes is not None:
            parser["batch_size"] = volumes
        torch.manual_seed(0)
        network = parser.get_parsed_content("network")
        criterion = parser.get_parsed_content("loss")
        optimizer = parser.get_parsed_content("optimizer")
        crops = parser.get_parsed_content("train#crops")
        prepare = parser.get_parsed_content("train#prepare_batch")
        batch_size = int(parser.get_parsed_content("batch_size"))
        grid = parser.get_parsed_content("sampling_grid")
        amp = bool(parser.get_parsed_content("amp"))
        autocast = autocast_kwargs(parser.get_parsed_content("amp_dtype")) if amp else None
    volume = torch.randint(0, 256, (1, *grid), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    batches = []
    for step in range(repeats + 1):
        items = []
        for b in range(batch_size):
            crops.set_random_state(seed=step * batch_size + b)
            items.append(crops({"image": volume}))
        batches.append(default_collate(items))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times, counter = [], FlopCounterMode(display=False)
    for step, batch in enumerate(batches):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        with counter if step == 0 else nullcontext():  # the warm-up step, not timed
            prepared = prepare(batch, device)
            inputs, targets = prepared[:2]
            args, kwargs = prepared[2:] if len(prepared) == 4 else ((), {})
            with torch.autocast(device.type, **autocast) if autocast else nullcontext():
                output = network(inputs, *args, **kwargs)
            loss = criterion(output, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    crop_count, voxels = crops_in(batches[0]["image"])
    return {
        "method": method,
        "size": size,
        "volumes": batch_size,
        "crops_per_step": crop_count,
        "voxels_per_step": voxels,
        "step_s": statistics.median(times[1:]),
        "peak_mib": _peak_memory_mib(device),
        "tflop_per_step": counter.get_total_flops() / 1e12,
        "loss": float(loss.detach()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=METHOD_NAMES, default=list(METHOD_NAMES))
    parser.add_argument("--sizes", nargs="+", choices=("demo", "paper"), default=["demo", "paper"])
    parser.add_argument("--volumes", type=int, default=1, help="volumes per step at paper size (demo: its own 2)")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps after one warm-up step")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=100_000, help="the budget's steps, for the GPU-hours column")
    parser.add_argument("--tflops", type=float, default=100.0, help="assumed sustained TFLOP/s of the GPU")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.child is not None:  # one (method, size) in its own process
        method, size = args.child.split(":")
        volumes = None if size == "demo" else args.volumes
        print(json.dumps(measure(method, size, volumes, args.repeats, device)))
        return
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {gpu}; torch {torch.__version__}; median of {args.repeats} steps after 1 warm-up step")
    print(f"GPU hours: {args.steps} steps of this many volumes at a sustained {args.tflops:g} TFLOP/s (an assumption)")
    columns = ["method", "size", "volumes", "crops / step", "voxels / step", "s / step", "peak memory (MiB)"]
    print("| " + " | ".join([*columns, "TFLOP / step", "GPU hours"]) + " |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for size in args.sizes:
        for method in args.methods:
            command = [sys.executable, __file__, "--child", f"{method}:{size}", "--volumes", str(args.volumes)]
            command += ["--repeats", str(args.repeats), "--device", args.device]
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                error = done.stderr.strip().splitlines()[-1] if done.stderr.strip() else f"exit {done.returncode}"
                print(f"| {method} | {size} | | | | failed: {error} | | | |", flush=True)
                continue
            r = json.loads(done.stdout.strip().splitlines()[-1])
            hours = args.steps * r["tflop_per_step"] / args.tflops / 3600
            gpu_hours = f"{hours:.1f}" if size == "paper" else "–"  # the demo is never run for a paper budget
            print(
                f"| {method} | {size} | {r['volumes']} | {r['crops_per_step']} | {r['voxels_per_step'] / 1e6:.2f} M "
                f"| {r['step_s']:.3f} | {r['peak_mib']:.0f} | {r['tflop_per_step']:.3f} | {gpu_hours} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
