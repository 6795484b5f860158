"""The author code's EMA teacher update after every optimiser step."""

from __future__ import annotations

from ignite.engine import Engine, Events

from voco_components.networks.voco_net import VoCoTeacherStudent
from voco_components.utils import unwrap_ddp

__all__ = [
    "EMATeacherHandler",
]


class EMATeacherHandler:
    """Ignite handler: after every iteration, move the teacher towards the student (author code: momentum 0.9).

    Args:
        momentum: EMA momentum; the teacher keeps this fraction of itself per step.
        network: the :class:`VoCoTeacherStudent`; the engine's ``network`` (DDP unwrapped) when None.
    """

    def __init__(self, momentum: float = 0.9, network: VoCoTeacherStudent | None = None) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {momentum}.")
        self.momentum = momentum
        self.network = network

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        network = unwrap_ddp(self.network if self.network is not None else engine.network)
        if not isinstance(network, VoCoTeacherStudent):
            raise TypeError(f"EMATeacherHandler needs a VoCoTeacherStudent network, got {type(network).__name__}.")
        network.update_teacher(self.momentum)
