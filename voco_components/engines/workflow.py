"""Glue between VoCo and MONAI's Ignite workflows (``SupervisedTrainer`` / ``SupervisedEvaluator``): the batch
preparation, the criterion, and step counting."""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.utils import CommonKeys
from torch import nn

from voco_components.data.volume_cache import dequantise
from voco_components.losses.voco import OfficialVoCoLoss, VoCoLoss
from voco_components.variants import get_variant

__all__ = [
    "epochs_for",
    "at_least_float32",
    "split_crop_features",
    "VoCoPrepareBatch",
    "VoCoCriterion",
]


def epochs_for(max_steps: int, steps_per_epoch: int) -> int:
    """Number of Ignite epochs of ``steps_per_epoch`` iterations that hold ``max_steps``; the last may be shorter."""
    if max_steps < 1 or steps_per_epoch < 1:
        raise ValueError(
            f"max_steps ({max_steps}) and the steps per epoch ({steps_per_epoch}) must both be at least 1."
        )
    return -(-max_steps // steps_per_epoch)


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

    ``batchdata[image_key]``: (B, n + k, C, *roi) from :class:`voco_components.transforms.crops.VoCoCropd`, with
    three spatial axes (volumes) or two (images); ``batchdata[label_key]``: (B, k, n). Returns inputs
    (B * (n + k), C, *roi) and labels (B, k, n).

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
        if images.ndim not in (5, 6):
            raise ValueError(
                f"'{self.image_key}' must be a batch of crop stacks (B, n + k, C, D, H, W) or, of 2D crops, "
                f"(B, n + k, C, H, W), got {tuple(images.shape)}."
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


def at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
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
            return self._loss(at_least_float32(output), at_least_float32(labels))

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
