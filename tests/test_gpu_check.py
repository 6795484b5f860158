"""Tests of benchmarks/gpu_check.py: the analytic FLOP count and the CPU run of every stage."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from voco_components.networks.attention import set_window_attention
from voco_components.networks.encoders import SwinEncoder
from voco_components.networks.voco_net import VoCoNet

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def _gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "feature_size, window, roi", [(12, 4, (32, 32, 32)), (12, 7, (64, 32, 32)), (24, 7, (32,) * 3)]
)
def test_swin_flops_equal_torch_flop_counter(feature_size, window, roi):
    """Analytic forward FLOPs = torch.utils.flop_counter's count of MONAI's eager encoder and the projector."""
    torch.manual_seed(0)
    net = VoCoNet(SwinEncoder(feature_size=feature_size, window_size=window), hidden_dim=64, out_dim=64)
    set_window_attention(net, "monai")  # plain matmuls, which the counter sees one by one
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        net(torch.rand(2, 1, *roi))
    expected = counter.get_total_flops() / 2  # per crop
    assert _gpu_check().swin_encoder_flops(feature_size, window, roi, projector=64) == expected


def test_swin_flops_hand_count_of_patch_embedding_and_one_stage():
    """Depth (1, 0, 0, 0), window 4 on a 4³ grid: one window of 64 tokens, every product counted by hand."""
    c, tokens, n = 12, 64, 64
    embed = 2 * tokens * c * 1 * 8
    block = 2 * tokens * c * 3 * c + 2 * tokens * c * c + 2 * 2 * tokens * n * c + 2 * 2 * tokens * c * 4 * c
    merges = 2 * 8 * 8 * c * 2 * c + 2 * 1 * 8 * 2 * c * 4 * c + 2 * 1 * 8 * 4 * c * 8 * c + 2 * 1 * 8 * 8 * c * 16 * c
    got = _gpu_check().swin_encoder_flops(c, 4, (8, 8, 8), depths=(1, 0, 0, 0))
    assert got == embed + block + merges


@pytest.mark.slow  # about 30 s on a quiet 2-core machine (minutes when it is shared)
def test_cpu_smoke_runs_every_stage(tmp_path):
    out = tmp_path / "check.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke", str(out), "--budget-s", "40"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(out.read_text())
    assert report["versions"]["device"] == "cpu"
    assert report["parity"]["sdpa/float32/math"]["hidden_rel"] <= 1e-5
    assert report["parity"]["sdpa/float32/math"]["max_grad_rel"] <= 1e-5
    assert set(report["recipes"]) == {
        "a_fp32_monai",
        "b_author_fp16_scaler_ckpt_monai",
        "c_bf16_sdpa",
        "d_bf16_sdpa_compile_fused",
    }
    for name, row in report["recipes"].items():
        assert row["all_losses_finite"] and row["median_step_s"] > 0 and row["timed_steps"] >= 1, name
    assert report["data_worker"]["crops_per_s"] > 0
