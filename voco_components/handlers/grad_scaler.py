"""A float16 GradScaler that is saved in and resumed from checkpoints."""

from __future__ import annotations

import torch
from ignite.engine import Engine, Events

from voco_components.engines.speed import _check_dtype

__all__ = [
    "GradScalerHandler",
]


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
