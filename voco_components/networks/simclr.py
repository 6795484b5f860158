"""SimCLR (Chen et al., ICML 2020) on the SwinViT of MONAI's SwinUNETR: the pooled deepest stage through an MLP."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["MLPProjector", "SimCLRNet"]


class MLPProjector(nn.Module):
    """SimCLR's projection head g: Linear - BatchNorm - ReLU - Linear, (N, in_dim) -> (N, out_dim)."""

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 128) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class SimCLRNet(nn.Module):
    """An encoder (pooled embedding, e.g. :class:`voco_components.networks.encoders.SwinEncoder`'s last stage) and
    :class:`MLPProjector`. Only the encoder (``encoder.*``) is exported.

    Args:
        encoder: maps crops to pooled embeddings (N, out_channels) and exposes ``out_channels``.
        hidden_dim: the projector's hidden width.
        out_dim: the projected size on which NT-Xent works (128 in the paper).

    Forward: crops (N, C, D, H, W) -> (N, out_dim).
    """

    def __init__(self, encoder: nn.Module, hidden_dim: int = 2048, out_dim: int = 128) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = MLPProjector(int(encoder.out_channels), hidden_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))
