"""End a run at any step count: the last epoch is shorter, and validation, checkpoint and export still fire."""

from __future__ import annotations

from ignite.engine import Engine, Events

from voco_components.engines.workflow import epochs_for

__all__ = [
    "LastStepHandler",
]


class LastStepHandler:
    """Ignite handler: train exactly ``max_steps`` iterations, and validate after the last one.

    At the start it sets the trainer's ``max_epochs`` to :func:`epochs_for` ``(max_steps, epoch_length)``
    (after a resume too, so a run can be shortened or extended). When ``max_steps`` is not a multiple of the
    epoch length it ends the last epoch early with ``terminate_epoch``, so that ``EPOCH_COMPLETED`` and
    ``COMPLETED`` still fire: the periodic validation, the final checkpoint and the export run as after any
    other last epoch (Ignite then opens the data iterator once more; with worker processes they load a few
    samples that are never used). A run resumed at ``max_steps`` or later does no further step. With ``validator``, the
    last epoch is validated also when the periodic ``ValidationHandler(interval=val_interval)`` skips it, so a
    validation interval longer than the run still yields a validated (and best) model.

    Attach it after :class:`voco_components.handlers.checkpoint.ResumeHandler`, whose restored state it reads.

    Args:
        max_steps: optimiser steps of the whole run.
        validator: the evaluator that ``ValidationHandler`` runs, or None.
        val_interval: epochs between the periodic validations.
    """

    def __init__(self, max_steps: int, validator: Engine | None = None, val_interval: int = 1) -> None:
        if max_steps < 1 or val_interval < 1:
            raise ValueError(f"max_steps and val_interval must be at least 1, got {max_steps} and {val_interval}.")
        self.max_steps = int(max_steps)
        self.validator = validator
        self.val_interval = int(val_interval)

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self._plan)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._stop)
        if self.validator is not None:
            engine.add_event_handler(Events.EPOCH_COMPLETED, self._validate_last)

    def _plan(self, engine: Engine) -> None:
        engine.state.max_epochs = epochs_for(self.max_steps, engine.state.epoch_length)
        if engine.state.iteration >= self.max_steps:
            engine.terminate()

    def _stop(self, engine: Engine) -> None:
        if engine.state.iteration == self.max_steps and engine.state.iteration % engine.state.epoch_length:
            engine.terminate_epoch()

    def _validate_last(self, engine: Engine) -> None:
        if engine.state.epoch == engine.state.max_epochs and engine.state.epoch % self.val_interval:
            self.validator.run(engine.state.epoch)
