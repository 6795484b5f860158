"""Swin UNETR's self-supervised loss (Tang et al., CVPR 2022): rotation, contrastive coding and inpainting."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from voco_components.losses.contrastive import GatheredContrastiveLoss

__all__ = ["SwinSSLLoss"]


class SwinSSLLoss(nn.Module):
    """L = w_rot · CE(rotation) + w_con · NT-Xent(view 1, view 2) + w_rec · L1(reconstruction, uncut views).

    Args:
        temperature: τ of the contrastive term (0.5 in the paper).
        weights: (w_rot, w_con, w_rec), 1/1/1 in the paper.

    ``forward(rotation_logits, rotation_labels, embeddings, reconstruction, target)``:

    - rotation_logits (2N, 4) and rotation_labels (2N,) int: the quarter turns of every view;
    - embeddings (2N, D): the contrastive head's output, the N first views then the N second views (row i and
      row N + i come from the same crop);
    - reconstruction and target (2N, C, *spatial): the reconstructed views and the views before the cutout.

    ``terms`` holds the detached ``rotation``, ``contrastive`` and ``reconstruction`` terms of the last call.
    """

    def __init__(self, temperature: float = 0.5, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__()
        if len(weights) != 3 or any(w < 0 for w in weights):
            raise ValueError(
                f"weights must be 3 non-negative numbers (rotation, contrastive, reconstruction), got {weights}."
            )
        self.weights = tuple(float(w) for w in weights)
        self.contrastive = GatheredContrastiveLoss(temperature)
        self.terms: dict[str, torch.Tensor] = {}

    def forward(
        self,
        rotation_logits: torch.Tensor,
        rotation_labels: torch.Tensor,
        embeddings: torch.Tensor,
        reconstruction: torch.Tensor,
        target: torch.Tensor,
    ) -> torch.Tensor:
        if embeddings.shape[0] % 2:
            raise ValueError(f"embeddings must hold two views per crop (2N rows), got {embeddings.shape[0]} rows.")
        half = embeddings.shape[0] // 2
        terms = {
            "rotation": F.cross_entropy(rotation_logits, rotation_labels),
            "contrastive": self.contrastive(embeddings[:half], embeddings[half:]),
            "reconstruction": F.l1_loss(reconstruction, target),
        }
        self.terms = {name: value.detach() for name, value in terms.items()}
        return sum(w * t for w, t in zip(self.weights, terms.values(), strict=True))
