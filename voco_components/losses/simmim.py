"""SimMIM's reconstruction loss (Xie et al., CVPR 2022): L1 on the masked voxels only."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["masked_l1", "MaskedL1Loss"]


def masked_l1(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean |prediction - target| over the masked voxels, every channel counted.

    Args:
        prediction: (N, C, *spatial) reconstruction.
        target: (N, C, *spatial) input before masking.
        mask: bool (N, *spatial), True where the input was masked; voxels outside it do not enter the loss.

    Returns:
        a 0-d tensor; 0 when nothing is masked.
    """
    if prediction.shape != target.shape:
        raise ValueError(f"prediction {tuple(prediction.shape)} and target {tuple(target.shape)} must match.")
    if mask.shape != (prediction.shape[0], *prediction.shape[2:]):
        raise ValueError(
            f"mask must have shape (N, *spatial) = {(prediction.shape[0], *prediction.shape[2:])}, "
            f"got {tuple(mask.shape)}."
        )
    weight = mask.unsqueeze(1).to(prediction.dtype)
    count = weight.sum() * prediction.shape[1]
    return ((prediction - target).abs() * weight).sum() / count.clamp_min(1.0)


class MaskedL1Loss(nn.Module):
    """:func:`masked_l1` as a module: ``forward(prediction, target, mask)``."""

    def forward(self, prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return masked_l1(prediction, target, mask)
