"""Training-speed settings for the bundles: autocast dtype, GradScaler choice, in-place compile, fused AdamW."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events
from monai.networks.nets.swin_unetr import SwinTransformer
from torch import nn

__all__ = ["AMP_DTYPES", "default_amp_dtype", "autocast_kwargs", "GradScalerHandler", "compile_swin", "fused_adamw"]

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


class GradScalerHandler:
    """Ignite handler: give a MONAI trainer the gradient scaler its autocast dtype needs.

    MONAI's ``Trainer.run`` creates a ``GradScaler`` whenever ``amp`` is on. float16 needs it (small
    gradients underflow); bfloat16 has float32's exponent range and does not, and its scaler would only
    add a pass over the gradients and a host sync per step (the inf check). At ``Events.STARTED``, after
    ``run`` has made its scaler, this handler replaces it by a disabled one for bfloat16, whose
    ``scale``, ``step`` and ``update`` reduce to the plain loss, ``optimizer.step()`` and nothing.

    Args:
        amp_dtype: ``"bfloat16"`` or ``"float16"``.
    """

    def __init__(self, amp_dtype: str) -> None:
        _check_dtype(amp_dtype)
        self.amp_dtype = amp_dtype

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if self.amp_dtype == "bfloat16" and getattr(engine, "scaler", None) is not None:
            engine.scaler = torch.amp.GradScaler("cuda", enabled=False)


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
