"""NT-Xent (SimCLR, Chen et al., ICML 2020) over the global batch: the two views of every rank gathered with their
gradients, then MONAI's ``ContrastiveLoss``."""

from __future__ import annotations

import torch
import torch.distributed as dist
from monai.losses import ContrastiveLoss
from torch import nn

__all__ = ["gather_with_gradients", "GatheredContrastiveLoss"]


def gather_with_gradients(tensor: torch.Tensor) -> torch.Tensor:
    """(N, ...) on each of W ranks -> (W·N, ...), rank order, the same on every rank; ``tensor`` itself outside a
    process group (or with one rank).

    ``torch.distributed.nn.all_gather`` carries gradients back: a rank's input receives the sum over ranks of the
    gradients that reach its rows. Every rank computes the same loss from the gathered batch, so that sum is W
    times the single-process gradient, and DDP's averaging over the W ranks makes the parameter gradients equal
    to those of one process holding the whole batch.
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    import torch.distributed.nn as dist_nn

    return torch.cat(dist_nn.all_gather(tensor.contiguous()), dim=0)


class GatheredContrastiveLoss(nn.Module):
    """NT-Xent between paired views, with the negatives of every DDP rank.

    ``forward(a, b)``: (N, D) embeddings of the first and second views, row i of ``a`` paired with row i of ``b``.
    Both are gathered across ranks (:func:`gather_with_gradients`), and MONAI's ``ContrastiveLoss`` computes, for
    each of the 2·W·N embeddings, −log(exp(cos(z, z⁺)/τ) / Σ_{z' ≠ z} exp(cos(z, z')/τ)), averaged: SimCLR's
    normalised temperature-scaled cross entropy.

    Args:
        temperature: τ.
    """

    def __init__(self, temperature: float = 0.5) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be positive, got {temperature}.")
        self.temperature = float(temperature)
        self.loss = ContrastiveLoss(temperature=self.temperature)

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        if a.ndim != 2 or a.shape != b.shape:
            raise ValueError(
                f"the two views must be (N, D) embeddings of one shape, got {tuple(a.shape)} and {tuple(b.shape)}."
            )
        return self.loss(gather_with_gradients(a), gather_with_gradients(b))
