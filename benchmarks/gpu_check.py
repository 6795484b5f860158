"""One-GPU check of the training-speed levers at paper size, as JSON; ``--cpu-smoke`` runs every stage tiny on CPU.

Stages, each inside a share of a fixed time budget (default 330 s; a slow stage times fewer steps and says so):

1. versions (torch, CUDA, MONAI, GPU);
2. parity of the SDPA window attention with MONAI's, in float32 and bfloat16, per SDPA backend
   (flash / efficient / math / cudnn through ``torch.nn.attention.sdpa_kernel``; a backend that refuses
   the masked call is recorded with its error);
3. paper-size pretraining steps (SwinEncoder feature_size 48 + 2048-d projector + VoCoLoss + AdamW) on
   ``--volumes`` x 20 crops of 64³: (a) float32, MONAI attention; (b) the author code's recipe: float16
   autocast + GradScaler + gradient checkpointing + MONAI attention; (c) bfloat16 autocast + SDPA;
   (d) (c) + ``torch.compile`` + fused AdamW. Per recipe: median step time, crops/s, peak memory, loss,
   model FLOP utilisation against the GPU's bfloat16 peak (FLOPs from :func:`swin_encoder_flops`);
4. the crops per second one data worker delivers from a cached sampling grid, and the workers (d) needs.

Usage: ``python benchmarks/gpu_check.py [OUT.json]`` (default ``$OUT/gpu_check.json``) or
``python benchmarks/gpu_check.py --cpu-smoke OUT.json``. ``benchmarks/gpu_check.sh`` prepares the packages.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

BF16_PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12}  # dense, per GPU


@dataclass(frozen=True)
class Size:
    """What one check measures: network, crops and step counts."""

    feature_size: int = 48
    window: int = 7
    roi: int = 64
    volumes: int = 4
    crops_per_volume: int = 20  # 16 base + 4 random
    projector: int = 2048
    warmup: int = 3
    timed: int = 20
    grid: tuple[int, int, int] = (256, 256, 64)  # the cached sampling grid a worker cuts crops from
    compile_backend: str = "inductor"


PAPER = Size()
# aot_eager: dynamo and autograd tracing without inductor's C++/Triton code generation, which takes minutes on CPU
SMOKE = Size(12, 4, 16, 1, projector=64, warmup=1, timed=2, grid=(64, 64, 16), compile_backend="aot_eager")


def _window_and_padded(grid: Sequence[int], window: int) -> tuple[list[int], list[int]]:
    """MONAI's window per axis (the grid size where the grid is not larger) and the padded grid."""
    win = [g if g <= window else window for g in grid]
    return win, [math.ceil(g / w) * w for g, w in zip(grid, win, strict=True)]


def swin_encoder_flops(
    feature_size: int,
    window: int,
    roi: Sequence[int],
    depths: Sequence[int] = (2, 2, 2, 2),
    in_channels: int = 1,
    projector: int | None = None,
) -> int:
    """Forward FLOPs (2 per multiply-add) of one crop through SwinViT (+ the VoCo projector when given).

    Counts the matrix products: patch embedding, per block qkv and output projections on the padded
    windows, q k^T and attention x v, the MLP on the real tokens, patch merging; and the projector's three
    linear layers from 16 * feature_size to ``projector``. A training step costs about 3x this.
    """
    grid = [r // 2 for r in roi]
    c = feature_size
    flops = 2 * math.prod(grid) * c * in_channels * 8  # Conv3d k=2 s=2
    for depth in depths:
        win, padded = _window_and_padded(grid, window)
        tokens, padded_tokens, n = math.prod(grid), math.prod(padded), math.prod(win)
        per_block = 2 * padded_tokens * c * 3 * c + 2 * padded_tokens * c * c  # qkv, proj
        per_block += 2 * 2 * padded_tokens * n * c  # q k^T and attn v over all windows and heads
        per_block += 2 * 2 * tokens * c * 4 * c  # MLP, ratio 4
        flops += depth * per_block
        grid = [math.ceil(g / 2) for g in grid]
        flops += 2 * math.prod(grid) * 8 * c * 2 * c  # patch merging: Linear(8c, 2c)
        c *= 2
    if projector:
        flops += 2 * (c * projector + 2 * projector * projector)
    return flops


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> float | None:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _budget_steps(wanted: int, step_s: float, seconds_left: float) -> int:
    """Timed steps that fit into ``seconds_left`` (at least 1)."""
    return max(1, min(wanted, int(seconds_left / max(step_s, 1e-6))))


def versions(device: torch.device) -> dict:
    import monai

    info = {"python": sys.version.split()[0], "torch": torch.__version__, "monai": monai.__version__}
    info["cuda"] = torch.version.cuda
    info["device"] = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    info["cpu_threads"] = torch.get_num_threads()
    return info


def _encoder(size: Size, attention: str, checkpointing: bool, depths: Sequence[int] = (2, 2, 2, 2)):
    from voco_components.networks.encoders import SwinEncoder

    return SwinEncoder(
        feature_size=size.feature_size,
        window_size=size.window,
        depths=depths,
        use_checkpoint=checkpointing,
        attention=attention,
    )


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-30))


def _errors(
    hidden: torch.Tensor, grads: list[torch.Tensor], ref_hidden: torch.Tensor, ref_grads: list[torch.Tensor]
) -> dict:
    """Relative L2 errors against the float32 MONAI reference: hidden state, and max / median over gradients."""
    grad_rel = [_rel(g, r) for g, r in zip(grads, ref_grads, strict=True)]
    return {
        "hidden_rel": _rel(hidden, ref_hidden),
        "max_grad_rel": max(grad_rel),
        "median_grad_rel": statistics.median(grad_rel),
    }


def parity(size: Size, device: torch.device) -> dict:
    """Hidden states and gradients of SDPA vs MONAI attention (float32 reference), per dtype and backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from voco_components.networks.attention import set_window_attention

    torch.manual_seed(0)
    encoder = _encoder(size, "monai", False).to(device)
    x = torch.rand(2, 1, size.roi, size.roi, size.roi, device=device)

    def run(dtype: torch.dtype | None) -> tuple[torch.Tensor, list[torch.Tensor]]:
        encoder.zero_grad(set_to_none=True)
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        with ctx:
            hidden = encoder.swinViT(x, True)[4]
        weights = torch.linspace(-1, 1, hidden.numel(), device=device).reshape(hidden.shape)
        (hidden.float() * weights).sum().backward()
        return hidden.detach(), [p.grad.detach().clone() for p in encoder.parameters() if p.grad is not None]

    ref_hidden, ref_grads = run(None)
    backends = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION}
    backends |= {"math": SDPBackend.MATH, "cudnn": SDPBackend.CUDNN_ATTENTION}
    results: dict = {}
    for dtype_name, dtype in (("float32", None), ("bfloat16", torch.bfloat16)):
        set_window_attention(encoder, "monai")
        results[f"monai/{dtype_name}"] = _errors(*run(dtype), ref_hidden, ref_grads)
        set_window_attention(encoder, "sdpa")
        for name, backend in backends.items():
            key = f"sdpa/{dtype_name}/{name}"
            try:
                with sdpa_kernel(backend):
                    hidden, grads = run(dtype)
            except RuntimeError as err:
                results[key] = {"error": str(err).splitlines()[0][:200]}
                continue
            results[key] = _errors(hidden, grads, ref_hidden, ref_grads)
    return results


@dataclass
class Recipe:
    """One way of running the pretraining step."""

    name: str
    attention: str
    amp_dtype: str | None
    scaler: bool
    checkpointing: bool
    compile: bool
    fused: bool


RECIPES = (
    Recipe("a_fp32_monai", "monai", None, False, False, False, False),
    Recipe("b_author_fp16_scaler_ckpt_monai", "monai", "float16", True, True, False, False),
    Recipe("c_bf16_sdpa", "sdpa", "bfloat16", False, False, False, False),
    Recipe("d_bf16_sdpa_compile_fused", "sdpa", "bfloat16", False, False, True, True),
)


def _step_inputs(size: Size, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops (volumes * 20, 1, roi³) and position labels (volumes, 4, 16) summing to 1 per crop."""
    gen = torch.Generator().manual_seed(0)
    crops = torch.rand(size.volumes * size.crops_per_volume, 1, size.roi, size.roi, size.roi, generator=gen)
    labels = torch.rand(size.volumes, 4, 16, generator=gen)
    return crops.to(device), (labels / labels.sum(-1, keepdim=True)).to(device)


def pretrain_steps(size: Size, recipe: Recipe, device: torch.device, seconds: float) -> dict:
    """Warm-up, then timed optimiser steps of one recipe within ``seconds``."""
    from voco_components.engines.speed import compile_swin
    from voco_components.losses.voco import VoCoLoss
    from voco_components.networks.voco_net import VoCoNet

    start = time.perf_counter()
    torch.manual_seed(0)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    net = VoCoNet(_encoder(size, recipe.attention, recipe.checkpointing), size.projector, size.projector).to(device)
    compile_swin(net, recipe.compile, backend=size.compile_backend)
    fused = True if recipe.fused and device.type == "cuda" else None
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4, weight_decay=1e-2, fused=fused)
    scaler = torch.amp.GradScaler(device.type, enabled=recipe.scaler)
    loss_fn = VoCoLoss()
    crops, labels = _step_inputs(size, device)
    dtype = getattr(torch, recipe.amp_dtype) if recipe.amp_dtype else None

    def step() -> torch.Tensor:
        ctx = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
        with ctx:
            features = net(crops).reshape(size.volumes, size.crops_per_volume, -1)
        loss = loss_fn(features[:, 16:].float(), features[:, :16].float(), labels)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.detach()

    times, losses = [], []
    for _ in range(size.warmup):
        losses.append(step())
    _sync(device)
    warm_s = time.perf_counter() - start
    timed = size.timed
    while len(times) < timed:
        t0 = time.perf_counter()
        losses.append(step())
        _sync(device)
        times.append(time.perf_counter() - t0)
        if len(times) == 1:
            timed = _budget_steps(size.timed, times[0], seconds - (time.perf_counter() - start))
    median = statistics.median(times)
    crops_per_step = size.volumes * size.crops_per_volume
    flops = 3 * swin_encoder_flops(size.feature_size, size.window, [size.roi] * 3, projector=size.projector)
    peak = next((v for k, v in BF16_PEAK_FLOPS.items() if k in versions(device)["device"]), None)
    achieved = flops * crops_per_step / median
    return {
        **asdict(recipe),
        "warmup_s": warm_s,
        "timed_steps": len(times),
        "timed_steps_wanted": size.timed,
        "median_step_s": median,
        "crops_per_s": crops_per_step / median,
        "peak_memory_mib": _peak_mib(device),
        "final_loss": float(losses[-1]),
        "all_losses_finite": bool(all(torch.isfinite(v) for v in losses)),
        "train_flops_per_step": flops * crops_per_step,
        "achieved_tflops": achieved / 1e12,
        "mfu_vs_bf16_peak": achieved / peak if peak else None,
    }


def worker_crops_per_s(size: Size, seconds: float) -> dict:
    """Crops per second one data worker cuts from a cached sampling grid (VoCoCropd, as the bundle)."""
    from voco_components.transforms.crops import VoCoCropd

    torch.set_num_threads(1)  # a DataLoader worker runs with one thread
    region = (size.grid[0] * 3 // 2, size.grid[1] * 3 // 2, size.grid[2])
    crop = VoCoCropd(keys="image", region_size=region, grid=(4, 4, 1), roi_size=(size.roi,) * 3, num_crops=4)
    crop.set_random_state(0)
    grid = {"image": torch.rand(1, *size.grid)}
    with tempfile.TemporaryDirectory() as folder:  # the on-disk cache holds the grid as a tensor file
        path = os.path.join(folder, "grid.pt")
        torch.save(grid["image"], path)
        done, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds or done == 0:
            sample = crop({"image": torch.load(path)})
            done += sample["image"].shape[0]
        elapsed = time.perf_counter() - start
    return {"crops_per_s": done / elapsed, "crops": done, "seconds": elapsed}


def run_check(size: Size, device: torch.device, budget_s: float, write: Callable[[dict], None]) -> dict:
    """All stages; the result is written after every stage so that a killed run keeps what it measured."""
    start = time.perf_counter()
    report: dict = {"size": asdict(size), "budget_s": budget_s, "versions": versions(device)}
    report["flops"] = {
        "encoder_forward_per_crop": swin_encoder_flops(size.feature_size, size.window, [size.roi] * 3),
        "with_projector_forward_per_crop": swin_encoder_flops(
            size.feature_size, size.window, [size.roi] * 3, projector=size.projector
        ),
    }
    print(f"analytic FLOPs: {report['flops']}", flush=True)
    write(report)
    report["parity"] = parity(size, device)
    write(report)
    report["recipes"] = {}
    for index, recipe in enumerate(RECIPES):
        left = budget_s * 0.9 - (time.perf_counter() - start)
        share = left / (len(RECIPES) - index + 0.3)
        try:
            report["recipes"][recipe.name] = pretrain_steps(size, recipe, device, share)
        except Exception as err:  # an out-of-memory recipe is a result, not the end of the check
            report["recipes"][recipe.name] = {"error": f"{type(err).__name__}: {str(err).splitlines()[0][:300]}"}
        print(recipe.name, json.dumps(report["recipes"][recipe.name]), flush=True)
        write(report)
    rows = report["recipes"]
    b, d = rows.get("b_author_fp16_scaler_ckpt_monai", {}), rows.get("d_bf16_sdpa_compile_fused", {})
    if "crops_per_s" in b and "crops_per_s" in d:
        report["speedup_d_over_b"] = d["crops_per_s"] / b["crops_per_s"]
        report["target_d_at_least_2x_b"] = report["speedup_d_over_b"] >= 2.0
    worker = worker_crops_per_s(size, seconds=min(15.0, max(2.0, budget_s - (time.perf_counter() - start))))
    report["data_worker"] = worker
    if "crops_per_s" in d:
        report["data_workers_needed_for_d"] = math.ceil(d["crops_per_s"] / worker["crops_per_s"])
    report["elapsed_s"] = time.perf_counter() - start
    write(report)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", help="JSON path (default $OUT/gpu_check.json)")
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny sizes on CPU: every stage in seconds")
    parser.add_argument("--budget-s", type=float, default=330.0, help="time budget of all stages")
    parser.add_argument("--volumes", type=int, default=PAPER.volumes, help="volumes per step (20 crops each)")
    args = parser.parse_args()
    out = Path(args.out or Path(os.environ.get("OUT", ".")) / "gpu_check.json")
    device = torch.device("cpu" if args.cpu_smoke or not torch.cuda.is_available() else "cuda")
    size = SMOKE if args.cpu_smoke else Size(volumes=args.volumes)
    if device.type == "cpu" and not args.cpu_smoke:
        raise SystemExit("gpu_check.py: no CUDA device; use --cpu-smoke for the CPU run of every stage.")
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False  # (a) is the float32 baseline, not TF32

    def write(report: dict) -> None:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(report, indent=2))
        tmp.replace(out)

    report = run_check(size, device, args.budget_s, write)
    print(f"wrote {out} ({report['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()
