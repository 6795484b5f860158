#!/usr/bin/env python
"""Cost of the organ probe at one validation of the pretraining CPU demo, next to the position validation.

Run from the repository root::

    python benchmarks/bench_online_probe.py

Builds the pretraining bundle with ``train.json`` + ``cpu_demo.json`` (the probe on the embedded organ
maps) in a scratch folder and times, in one process: one run of the validation evaluator without the
probe (the position metrics on the held-out CT), the probe's one-off crop preparation, and one probe
(features of every crop, kNN and logistic regression) on the untrained encoder. Prints the crop counts and
scores too, and how much of the CPU other processes used meanwhile.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_crops import OtherLoad
from ignite.engine import Events
from monai.bundle import ConfigWorkflow

CONFIGS = Path(__file__).resolve().parents[1] / "bundles" / "voco_pretrain" / "configs"


def main() -> None:
    load = OtherLoad()
    with tempfile.TemporaryDirectory() as root:
        wf = ConfigWorkflow(
            config_file=[str(CONFIGS / "train.json"), str(CONFIGS / "cpu_demo.json")],
            workflow_type="train",
            bundle_root=root,
        )
        wf.initialize()
        probe = wf.parser.get_parsed_content("validate#probe")
        evaluator = wf.parser.get_parsed_content("validate#evaluator")
        evaluator.remove_event_handler(probe, Events.EPOCH_COMPLETED)
        start = time.perf_counter()
        evaluator.run()
        position_s = time.perf_counter() - start
        start = time.perf_counter()
        crops = probe.crops()
        prepare_s = time.perf_counter() - start
        start = time.perf_counter()
        scores = probe.compute()
        probe_s = time.perf_counter() - start
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, python {sys.version.split()[0]}")
    print(f"crops: {len(crops['training'])} fit, {len(crops['validation'])} score")
    print(f"position validation (without the probe): {position_s:.1f} s")
    print(f"probe crop preparation (once per run):    {prepare_s:.1f} s")
    print(f"probe at one validation:                   {probe_s:.1f} s")
    print("untrained encoder: " + ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if "accuracy" in k))
    other = load.fraction()
    if other is not None:
        note = "" if other < 0.1 else "  WARNING: the cores were shared, timings are inflated and noisy"
        print(f"other processes used {100 * other:.0f}% of the CPU time during the run{note}")


if __name__ == "__main__":
    main()
