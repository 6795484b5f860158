"""Training-speed settings for the bundles: autocast dtype, in-place compile, fused AdamW."""

from __future__ import annotations

import torch
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

__all__ = [
    "AMP_DTYPES",
    "default_amp_dtype",
    "autocast_kwargs",
    "compile_swin",
    "fused_adamw",
]


AMP_DTYPES = ("bfloat16", "float16")


def default_amp_dtype() -> str:
    """``"bfloat16"`` where CUDA supports it, else ``"float16"``."""
    return "bfloat16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "float16"


def _check_dtype(amp_dtype: str) -> None:
    if amp_dtype not in AMP_DTYPES:
        raise ValueError(f"amp_dtype must be one of {AMP_DTYPES}, got {amp_dtype!r}.")


def autocast_kwargs(amp_dtype: str) -> dict[str, torch.dtype]:
    """``amp_kwargs`` for MONAI's trainers and evaluators (``torch.autocast("cuda", **amp_kwargs)``)."""
    _check_dtype(amp_dtype)
    return {"dtype": getattr(torch, amp_dtype)}


def compile_swin(network: nn.Module, enabled: bool = True, backend: str = "inductor") -> nn.Module:
    """``torch.compile`` every SwinViT (MONAI ``SwinTransformer``) inside ``network`` in place, with static shapes.

    ``nn.Module.compile`` keeps the module and its state-dict keys (no ``_orig_mod.`` prefix), so
    checkpoints, exports and EMA teachers see the same tensors. Returns ``network``.
    """
    if enabled:
        for module in network.modules():
            if isinstance(module, SwinTransformer):
                module.compile(dynamic=False, backend=backend)
    return network


def fused_adamw(device: torch.device | str) -> bool | None:
    """``fused`` for ``torch.optim.AdamW``: True on CUDA (one kernel for all parameters), else None (the default)."""
    return True if torch.device(device).type == "cuda" else None
