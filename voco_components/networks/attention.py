"""Shifted-window attention for MONAI's SwinViT through scaled_dot_product_attention, with cached window masks."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import BasicLayer, WindowAttention, get_window_size
from torch import nn

__all__ = [
    "ATTENTION_KINDS",
    "MASK_VALUE",
    "MASK_ALIGNMENT",
    "shifted_window_mask",
    "window_attention",
    "SDPAWindowAttention",
    "MaskCachingBasicLayer",
    "set_window_attention",
    "swin_unetr",
]

ATTENTION_KINDS = ("sdpa", "monai")
MASK_VALUE = -100.0  # what MONAI adds between tokens of different shifted regions (not -inf: the same function)
MASK_ALIGNMENT = 8  # elements: the memory-efficient SDPA kernel needs mask rows starting at multiples of this


def _region_labels(length: int, window: int, shift: int) -> torch.Tensor:
    """(length,) region index along one axis of a cyclically shifted grid: 0 | 1 | 2, or all 0 without a shift."""
    index = torch.arange(length)
    if shift == 0:
        return torch.zeros(length, dtype=torch.long)
    return (index >= length - window).long() + (index >= length - shift).long()


def shifted_window_mask(
    dims: Sequence[int], window_size: Sequence[int], shift_size: Sequence[int], device: torch.device | str | None = None
) -> torch.Tensor:
    """The additive mask of shifted-window attention for a padded grid.

    Args:
        dims: padded spatial size (D, H, W) or (H, W), multiples of ``window_size``.
        window_size: window per axis.
        shift_size: cyclic shift per axis.

    Returns:
        (num_windows, n, n) float32, n = prod(window_size): 0 between tokens of the same region of the
        shifted grid, ``MASK_VALUE`` between tokens of different regions; windows in raster order.
    """
    labels = torch.zeros((), dtype=torch.long)
    for length, window, shift in zip(dims, window_size, shift_size, strict=True):
        labels = labels.unsqueeze(-1) * 3 + _region_labels(length, window, shift)
    blocks = []
    for length, window in zip(dims, window_size, strict=True):
        blocks += [length // window, window]
    spatial = len(dims)
    labels = labels.reshape(blocks).permute(*range(0, 2 * spatial, 2), *range(1, 2 * spatial, 2))
    labels = labels.reshape(-1, math.prod(window_size))
    different = labels.unsqueeze(1) != labels.unsqueeze(2)
    return torch.where(different, MASK_VALUE, 0.0).to(device=device, dtype=torch.float32)


def _aligned(mask: torch.Tensor) -> torch.Tensor:
    """(..., n, n) -> the same values in storage whose rows start at multiples of ``MASK_ALIGNMENT`` elements.

    Only on CUDA, where the memory-efficient kernel would otherwise pad the mask itself in every call.
    """
    n = mask.shape[-1]
    pad = -n % MASK_ALIGNMENT
    return F.pad(mask, (0, pad))[..., :n] if pad and mask.is_cuda else mask


def window_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, additive: torch.Tensor, scale: float, dropout: float = 0.0
) -> torch.Tensor:
    """softmax(scale * q k^T + additive) v: q, k, v (B, H, n, d), additive broadcastable to (B, H, n, n).

    ``scaled_dot_product_attention``, except on CPU when the mask needs a gradient: no CPU kernel of
    it differentiates the mask (its math fallback, slower than the eager product, would be used), so
    there the product is computed directly, adding the mask in place.
    """
    if q.is_cuda or not (additive.requires_grad and torch.is_grad_enabled()):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=additive, dropout_p=dropout, scale=scale)
    weights = ((q * scale) @ k.transpose(-2, -1)).add_(additive).softmax(dim=-1)
    return F.dropout(weights, dropout, training=dropout > 0) @ v


class SDPAWindowAttention(WindowAttention):
    """MONAI's ``WindowAttention`` computed by ``torch.nn.functional.scaled_dot_product_attention``.

    Same parameters and buffers (``qkv``, ``proj``, ``relative_position_bias_table``,
    ``relative_position_index``) and the same function, in training as well as inference: the relative
    position bias and the shifted-window mask are folded into one additive mask in the query's dtype,
    and the windows of one image share it (the heads of the ``num_windows`` windows become
    ``num_windows * num_heads`` heads of one batch entry), so it is never expanded over the batch.

    Forward: x (B * num_windows, n, C), mask (num_windows, n, n) or None -> (B * num_windows, n, C).
    """

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        index = self.relative_position_index[:n, :n].reshape(-1)
        bias = self.relative_position_bias_table[index].reshape(n, n, heads).permute(2, 0, 1)  # (heads, n, n)
        groups = 1 if mask is None else mask.shape[0]
        additive = bias.unsqueeze(0) if mask is None else bias.unsqueeze(0) + mask.unsqueeze(1)
        qkv = self.qkv(x).reshape(b // groups, groups, n, 3, heads, c // heads)
        q, k, v = qkv.permute(3, 0, 1, 4, 2, 5).reshape(3, b // groups, groups * heads, n, c // heads).unbind(0)
        additive = _aligned(additive.reshape(1, groups * heads, n, n).to(q.dtype))
        dropout = self.attn_drop.p if self.training else 0.0
        out = window_attention(q, k, v, additive, self.scale, dropout)
        out = out.reshape(b // groups, groups, heads, n, c // heads).permute(0, 1, 3, 2, 4).reshape(b, n, c)
        return self.proj_drop(self.proj(out))


class MaskCachingBasicLayer(BasicLayer):
    """MONAI's Swin stage (``BasicLayer``) that builds its shifted-window mask once per input shape.

    MONAI rebuilds the mask in every forward; here it is kept in ``window_masks``, keyed by padded grid,
    window, shift and device (not a buffer: it is not part of the state dict).

    Forward: (B, C, *spatial) -> (B, C', *spatial') as ``BasicLayer``.
    """

    window_masks: dict[tuple[Any, ...], torch.Tensor]

    def window_mask(
        self, dims: tuple[int, ...], window: tuple[int, ...], shift: tuple[int, ...], device: torch.device
    ) -> torch.Tensor | None:
        """The (num_windows, n, n) mask for a padded grid, from the cache; None when nothing is shifted."""
        if not any(shift):
            return None
        key = (dims, window, shift, device)
        if key not in self.window_masks:
            self.window_masks[key] = shifted_window_mask(dims, window, shift, device)
        return self.window_masks[key]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, *spatial = x.shape
        window, shift = get_window_size(tuple(spatial), self.window_size, self.shift_size)
        padded = tuple(math.ceil(s / w) * w for s, w in zip(spatial, window, strict=True))
        mask = self.window_mask(padded, tuple(window), tuple(shift), x.device)
        x = x.movedim(1, -1)
        for block in self.blocks:
            x = block(x, mask)
        x = x.view(b, *spatial, -1)
        if self.downsample is not None:
            x = self.downsample(x)
        return x.movedim(-1, 1)


_SWAPS = {"sdpa": {WindowAttention: SDPAWindowAttention, BasicLayer: MaskCachingBasicLayer}}
_SWAPS["monai"] = {new: old for old, new in _SWAPS["sdpa"].items()}


def set_window_attention(module: nn.Module, attention: str = "sdpa") -> nn.Module:
    """Switch every Swin stage and window attention inside ``module`` to ``attention``, in place.

    ``"sdpa"``: :class:`SDPAWindowAttention` and :class:`MaskCachingBasicLayer`; ``"monai"``: MONAI's own
    ``WindowAttention`` and ``BasicLayer`` (also switching back). Only the classes of those modules
    change: parameters, buffers and state-dict keys stay as they are, so checkpoints load either way.
    MONAI 1.6's Hyena stages are left alone.

    Returns:
        ``module``.
    """
    if attention not in ATTENTION_KINDS:
        raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {attention!r}.")
    swaps = _SWAPS[attention]
    for sub in module.modules():
        target = swaps.get(type(sub))
        if target is None or getattr(sub, "use_hyena", False):
            continue
        sub.__class__ = target
        if target is MaskCachingBasicLayer:
            sub.window_masks = {}
    return module


def swin_unetr(attention: str = "sdpa", **kwargs: Any) -> SwinUNETR:
    """``monai.networks.nets.SwinUNETR(**kwargs)`` with its window attention set by :func:`set_window_attention`."""
    return set_window_attention(SwinUNETR(**kwargs), attention)
