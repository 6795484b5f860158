"""Glue between VoCo and MONAI's Ignite workflows (``SupervisedTrainer`` / ``SupervisedEvaluator``)."""

from __future__ import annotations

from typing import Any

import torch
from ignite.engine import Engine, Events
from monai.engines.utils import PrepareBatch
from monai.utils import CommonKeys
from torch import nn

from voco_components.checkpoint import unwrap_ddp
from voco_components.losses import OfficialVoCoLoss, VoCoLoss
from voco_components.networks import VoCoTeacherStudent
from voco_components.variants import get_variant
from voco_components.volume_cache import dequantise

__all__ = [
    "epochs_for",
    "LastStepHandler",
    "VoCoPrepareBatch",
    "split_crop_features",
    "VoCoCriterion",
    "EMATeacherHandler",
    "LossTermsHandler",
]


def epochs_for(max_steps: int, steps_per_epoch: int) -> int:
    """Number of Ignite epochs of ``steps_per_epoch`` iterations that hold ``max_steps``; the last may be shorter."""
    if max_steps < 1 or steps_per_epoch < 1:
        raise ValueError(
            f"max_steps ({max_steps}) and the steps per epoch ({steps_per_epoch}) must both be at least 1."
        )
    return -(-max_steps // steps_per_epoch)


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

    Attach it after :class:`voco_components.checkpoint.ResumeHandler`, whose restored state it reads.

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


def split_crop_features(features: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the network output of a batch into random-crop and base-crop features.

    Args:
        features: (B * (n + k), C), volumes contiguous, each with its n base crops first.
        labels: (B, k, n) position labels, which give B, k and n.

    Returns:
        random (B, k, C) and base (B, n, C).
    """
    if labels.ndim != 3:
        raise ValueError(f"labels must have shape (B, k, n), got {tuple(labels.shape)}.")
    b, k, n = labels.shape
    if features.ndim != 2 or features.shape[0] != b * (n + k):
        raise ValueError(
            f"features must have shape (B*(n+k), C) = ({b * (n + k)}, C) for labels {tuple(labels.shape)}, "
            f"got {tuple(features.shape)}."
        )
    per_volume = features.reshape(b, n + k, features.shape[-1])
    return per_volume[:, n:], per_volume[:, :n]


class VoCoPrepareBatch(PrepareBatch):
    """Turn a collated VoCo batch into network input and targets.

    ``batchdata[image_key]``: (B, n + k, C, *roi) from :class:`voco_components.transforms.VoCoCropd`;
    ``batchdata[label_key]``: (B, k, n). Returns inputs (B * (n + k), C, *roi) and labels (B, k, n).

    uint8 crops (from the prepared cache) are moved to the device as uint8 and only there become
    float32 ``crop / 255 + offset``, the offsets being ``batchdata[shift_key]`` (B, n + k) when present.
    """

    def __init__(
        self, image_key: str = CommonKeys.IMAGE, label_key: str = CommonKeys.LABEL, shift_key: str = "voco_shift"
    ) -> None:
        self.image_key = image_key
        self.label_key = label_key
        self.shift_key = shift_key

    def __call__(
        self,
        batchdata: dict[str, torch.Tensor],
        device: str | torch.device | None = None,
        non_blocking: bool = False,
        **kwargs: Any,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        images = torch.as_tensor(batchdata[self.image_key])
        labels = torch.as_tensor(batchdata[self.label_key])
        if images.ndim != 6:
            raise ValueError(
                f"'{self.image_key}' must be a batch of crop stacks (B, n + k, C, D, H, W), got {tuple(images.shape)}."
            )
        if labels.ndim != 3 or labels.shape[0] != images.shape[0] or sum(labels.shape[1:]) != images.shape[1]:
            raise ValueError(
                f"'{self.label_key}' must have shape (B, k, n) with n + k = {images.shape[1]}, "
                f"got {tuple(labels.shape)}."
            )
        inputs = images.flatten(0, 1).to(device=device, non_blocking=non_blocking, **kwargs)
        if inputs.dtype == torch.uint8:
            inputs = dequantise(inputs)
            if self.shift_key in batchdata:
                shifts = (
                    torch.as_tensor(batchdata[self.shift_key]).flatten().to(device=device, non_blocking=non_blocking)
                )
                inputs.add_(shifts.view(-1, *([1] * (inputs.ndim - 1))))
        return inputs, labels.to(device=device, non_blocking=non_blocking, **kwargs)


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    """16-bit floating tensors cast to float32; float32 and float64 as they are."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


class VoCoCriterion(nn.Module):
    """``SupervisedTrainer(loss_function=...)`` adapter: network output and labels in, VoCo loss out.

    Args:
        variant: ``paper`` (output (B*(n+k), C), :class:`VoCoLoss`) or ``official`` (output (2, B*(n+k), C)
            from :class:`VoCoTeacherStudent`, :class:`OfficialVoCoLoss`).
        lambda_reg: regulariser weight of the paper variant (the official variant takes none).

    ``terms`` holds the detached loss terms of the last call. The loss is always computed in float32 with
    autocast off: under 16-bit autocast its cosine matmuls and log(1 - |y - l|) near 0 would lose the
    epsilon (1e-6 is below float16's and bfloat16's resolution around 1).
    """

    def __init__(self, variant: str = "paper", lambda_reg: float = 1.0) -> None:
        super().__init__()
        self.variant = get_variant(variant)
        if self.variant.uses_teacher and lambda_reg != 1.0:
            raise ValueError(f"the official variant weighs its terms 1:1:1 and has no lambda_reg (got {lambda_reg}).")
        self.loss = OfficialVoCoLoss() if self.variant.uses_teacher else VoCoLoss(lambda_reg=lambda_reg)

    @property
    def terms(self) -> dict[str, torch.Tensor]:
        return self.loss.terms

    def forward(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        with torch.autocast(output.device.type, enabled=False):
            return self._loss(_at_least_float32(output), _at_least_float32(labels))

    def _loss(self, output: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if not self.variant.uses_teacher:
            random, base = split_crop_features(output, labels)
            return self.loss(random, base, labels)
        if output.ndim != 3 or output.shape[0] != 2:
            raise ValueError(
                f"the official variant needs (student, teacher) features (2, N, C), got {tuple(output.shape)}."
            )
        s_random, s_base = split_crop_features(output[0], labels)
        t_random, t_base = split_crop_features(output[1], labels)
        return self.loss(s_random, s_base, t_random, t_base, labels)


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
