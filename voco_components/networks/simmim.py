"""SimMIM (Xie et al., CVPR 2022) on the SwinViT of MONAI's SwinUNETR: a learnable mask token in place of the masked
patch embeddings, and a light decoder from the deepest stage."""

from __future__ import annotations

import torch
from monai.networks.blocks import SubpixelUpsample
from torch import nn

from voco_components.networks.encoders import SwinEncoder
from voco_components.transforms.masking import expand_mask

__all__ = ["SimMIMNet"]

SWIN_STRIDE = 32
"""Input voxels per voxel of the deepest SwinViT stage on every axis (patch size 2, then four mergings)."""


class SimMIMNet(nn.Module):
    """Masked image modelling on a :class:`SwinEncoder`: ``forward(x, mask)`` reconstructs ``x``.

    The crop is patch-embedded by ``encoder.swinViT``; every embedding of a masked unit is replaced by the learnable
    ``mask_token`` (E,) (a forward hook on the patch embedding, so the encoder's own forward and key names stay
    MONAI's), the Swin stages run as usual, and the deepest stage (N, 16·E, *spatial / 32) is mapped by a 1×1×1
    convolution to 32³·C channels and pixel-shuffled back to (N, C, *spatial) (``SubpixelUpsample``). Only the
    encoder (``encoder.*``) is exported; the mask token and the decoder are the pretext task's.

    Args:
        encoder: the single-scale :class:`SwinEncoder` being pretrained (``multiscale`` False).
        in_channels: image channels to reconstruct.

    Forward: x (N, C, D, H, W), each divisible by 32; mask bool (N, *units), units dividing the patch grid
    (D/2, H/2, W/2), True for a masked unit -> reconstruction (N, C, D, H, W).
    """

    def __init__(self, encoder: SwinEncoder, in_channels: int = 1) -> None:
        super().__init__()
        if getattr(encoder, "multiscale", False):
            raise ValueError("SimMIM trains the single-scale SwinEncoder (variant 'paper'); got a multiscale encoder.")
        self.encoder = encoder
        embed_dim = int(encoder.swinViT.patch_embed.embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(embed_dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        conv = nn.Conv3d(int(encoder.out_channels), in_channels * SWIN_STRIDE**3, kernel_size=1)
        self.decoder = SubpixelUpsample(3, None, in_channels, SWIN_STRIDE, conv_block=conv, apply_pad_pool=False)
        self._mask: torch.Tensor | None = None
        encoder.swinViT.patch_embed.register_forward_hook(self._replace_masked)

    def _replace_masked(self, module: nn.Module, inputs: tuple, embedded: torch.Tensor) -> torch.Tensor | None:
        """Patch-embedding hook: (N, E, *grid) with the masked units' embeddings replaced by ``mask_token``."""
        if self._mask is None:
            return None
        weight = expand_mask(self._mask, embedded.shape[2:]).unsqueeze(1).to(embedded.dtype)
        return embedded * (1.0 - weight) + self.mask_token.view(1, -1, 1, 1, 1).to(embedded.dtype) * weight

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if mask.ndim != x.ndim - 1 or mask.shape[0] != x.shape[0]:
            raise ValueError(f"mask must have shape (N, *units) for x {tuple(x.shape)}, got {tuple(mask.shape)}.")
        self._mask = mask
        try:
            deepest = self.encoder.swinViT(x, self.encoder.normalize)[4]
        finally:
            self._mask = None
        return self.decoder(deepest)
