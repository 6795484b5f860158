"""Swin UNETR's self-supervised heads (Tang et al., CVPR 2022) on the SwinViT of MONAI's SwinUNETR."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from voco_components.networks.encoders import SwinEncoder

__all__ = ["ReconstructionHead", "SwinSSLNet"]


class ReconstructionHead(nn.Module):
    """Five transposed convolutions (kernel 2, stride 2) from the deepest SwinViT stage back to the input size,
    halving the channels each time, LeakyReLU between them: (N, in_channels, *s) -> (N, out_channels, *32·s)."""

    def __init__(self, in_channels: int, out_channels: int = 1) -> None:
        super().__init__()
        widths = [in_channels // 2**i for i in range(5)] + [out_channels]
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            layers.append(nn.ConvTranspose3d(a, b, kernel_size=2, stride=2))
            if i < 4:
                layers.append(nn.LeakyReLU(inplace=True))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SwinSSLNet(nn.Module):
    """A :class:`SwinEncoder` with Swin UNETR's three pretext heads.

    The deepest stage (N, 16·E, *spatial / 32) is average-pooled for the rotation head (a linear 4-way classifier)
    and the contrastive coding head (a linear projection to ``contrastive_dim``), and decoded by the
    :class:`ReconstructionHead` for inpainting. Only the encoder (``encoder.*``) is exported.

    Args:
        encoder: the single-scale :class:`SwinEncoder` being pretrained.
        in_channels: image channels to reconstruct.
        contrastive_dim: size of the contrastive embedding.

    Forward: (N, C, D, H, W), each divisible by 32 -> ``{"rotation": (N, 4), "embedding": (N, contrastive_dim),
    "reconstruction": (N, C, D, H, W)}``.
    """

    def __init__(self, encoder: SwinEncoder, in_channels: int = 1, contrastive_dim: int = 512) -> None:
        super().__init__()
        if getattr(encoder, "multiscale", False):
            raise ValueError("swin_ssl trains the single-scale SwinEncoder (variant 'paper'); got a multiscale one.")
        self.encoder = encoder
        width = int(encoder.out_channels)
        self.rotation_head = nn.Linear(width, 4)
        self.contrastive_head = nn.Linear(width, contrastive_dim)
        self.reconstruction_head = ReconstructionHead(width, in_channels)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        deepest = self.encoder.swinViT(x, self.encoder.normalize)[4]
        pooled = F.adaptive_avg_pool3d(deepest, 1).flatten(1)
        return {
            "rotation": self.rotation_head(pooled),
            "embedding": self.contrastive_head(pooled),
            "reconstruction": self.reconstruction_head(deepest),
        }
