"""Log the terms of the VoCo loss (prediction and regularisation) beside their sum."""

from __future__ import annotations

from ignite.engine import Engine, Events

from voco_components.engines.workflow import VoCoCriterion
from voco_components.losses.voco import OfficialVoCoLoss, VoCoLoss

__all__ = [
    "LossTermsHandler",
]


class LossTermsHandler:
    """Ignite handler: copy the criterion's loss terms into ``engine.state.output`` as ``loss_<term>``, so that
    ``StatsHandler`` and ``TensorBoardStatsHandler`` log them beside ``loss``.

    The terms stay detached 0-d tensors on the network's device: turning them into Python floats would
    wait for the GPU in every step; the logging handlers convert them when they log.

    Works with ``decollate=False`` (one output dict) and with MONAI's default decollated list of dicts.
    """

    def __init__(self, criterion: VoCoCriterion | VoCoLoss | OfficialVoCoLoss) -> None:
        self.criterion = criterion

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        output = engine.state.output
        outputs = [output] if isinstance(output, dict) else [o for o in output if isinstance(o, dict)]
        terms = {f"loss_{name}": value.detach() for name, value in self.criterion.terms.items()}
        for out in outputs:
            out.update(terms)
