"""Glue between the baseline pretraining methods and MONAI's Ignite workflows: batch preparation and criteria.

The batches come from :mod:`voco_components.transforms.masking` (SimMIM) and :mod:`voco_components.transforms.views`
(Swin UNETR's self-supervised views, SimCLR's pairs). uint8 crops from the prepared cache become float32
``crop / 255`` only on the device, as in :class:`voco_components.engines.workflow.VoCoPrepareBatch`.
"""

from __future__ import annotations

from typing import Any

import torch
from monai.engines.utils import PrepareBatch
from monai.utils import CommonKeys
from torch import nn

from voco_components.data.volume_cache import dequantise
from voco_components.engines.workflow import at_least_float32
from voco_components.losses.contrastive import GatheredContrastiveLoss
from voco_components.losses.simmim import masked_l1
from voco_components.losses.swin_ssl import SwinSSLLoss
from voco_components.transforms.masking import expand_mask

__all__ = [
    "to_device_float",
    "MaskedCropPrepareBatch",
    "TwoViewPrepareBatch",
    "SimMIMCriterion",
    "SwinSSLCriterion",
    "SimCLRCriterion",
]


def to_device_float(images: Any, device: str | torch.device | None, non_blocking: bool = False) -> torch.Tensor:
    """``images`` on ``device`` as floats: uint8 moved as uint8 and dequantised there (``/ 255``)."""
    tensor = torch.as_tensor(images).to(device=device, non_blocking=non_blocking)
    return dequantise(tensor) if tensor.dtype == torch.uint8 else tensor


def _batch_of(batchdata: dict[str, Any], key: str, ndim: int, shape: str) -> torch.Tensor:
    value = torch.as_tensor(batchdata[key])
    if value.ndim != ndim:
        raise ValueError(f"'{key}' must be a batch {shape}, got {tuple(value.shape)}.")
    return value


class MaskedCropPrepareBatch(PrepareBatch):
    """A SimMIM batch: ``image`` (B, c, C, *roi) and ``mask`` (B, c, *units) from
    :class:`voco_components.transforms.masking.MaskedCropsd` -> inputs (B·c, C, *roi), targets
    ``{"image": inputs, "mask": (B·c, *units)}``, and the mask as the network's ``mask`` argument."""

    def __init__(self, image_key: str = CommonKeys.IMAGE, mask_key: str = "mask") -> None:
        self.image_key = image_key
        self.mask_key = mask_key

    def __call__(
        self, batchdata: dict[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple, dict[str, torch.Tensor]]:
        images = _batch_of(batchdata, self.image_key, 6, "of crop stacks (B, c, C, D, H, W)")
        masks = _batch_of(batchdata, self.mask_key, 5, "of unit masks (B, c, u, v, w)")
        if masks.shape[:2] != images.shape[:2]:
            raise ValueError(
                f"'{self.mask_key}' {tuple(masks.shape)} must have one mask per crop of {tuple(images.shape)}."
            )
        inputs = to_device_float(images.flatten(0, 1), device, non_blocking)
        mask = masks.flatten(0, 1).to(device=device, non_blocking=non_blocking)
        return inputs, {"image": inputs, "mask": mask}, (), {"mask": mask}


class TwoViewPrepareBatch(PrepareBatch):
    """A two-view batch: ``image`` (B, c, 2, C, *roi) from
    :class:`voco_components.transforms.views.RotationCutoutViewsd`
    or :class:`voco_components.transforms.views.OverlappingViewsd` -> inputs (2M, C, *roi), M = B·c: the M first
    views, then the M second views (row i and row M + i are the two views of one crop).

    On the device, each view becomes ``x · scale + offset`` when ``intensity_key`` (B, c, 2, 2) is in the batch, and
    its ``cutout_key`` boxes (B, c, 2, *roi) are set to 0 in the inputs when present. Targets: ``{"image": the views
    before the cutout}``, with ``"rotation"`` (2M,) when ``rotation_key`` (B, c, 2) is in the batch.
    """

    def __init__(
        self,
        image_key: str = CommonKeys.IMAGE,
        rotation_key: str = "rotation",
        cutout_key: str = "cutout",
        intensity_key: str = "intensity",
    ) -> None:
        self.image_key = image_key
        self.rotation_key = rotation_key
        self.cutout_key = cutout_key
        self.intensity_key = intensity_key

    @staticmethod
    def _views_first(value: torch.Tensor) -> torch.Tensor:
        """(B, c, 2, ...) -> (2·B·c, ...): all first views, then all second views."""
        return value.flatten(0, 1).transpose(0, 1).flatten(0, 1)

    def __call__(
        self, batchdata: dict[str, Any], device: str | torch.device | None = None, non_blocking: bool = False, **kwargs
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        images = _batch_of(batchdata, self.image_key, 7, "of view pairs (B, c, 2, C, D, H, W)")
        if images.shape[2] != 2:
            raise ValueError(f"'{self.image_key}' must hold 2 views per crop, got {tuple(images.shape)}.")
        views = to_device_float(self._views_first(images), device, non_blocking)
        if self.intensity_key in batchdata:
            intensity = self._views_first(torch.as_tensor(batchdata[self.intensity_key])).to(device=device)
            views = views * intensity[:, 0].view(-1, 1, 1, 1, 1) + intensity[:, 1].view(-1, 1, 1, 1, 1)
        targets = {"image": views}
        inputs = views
        if self.cutout_key in batchdata:
            cutout = self._views_first(torch.as_tensor(batchdata[self.cutout_key])).to(device=device)
            inputs = views.masked_fill(cutout.unsqueeze(1), 0.0)
        if self.rotation_key in batchdata:
            targets["rotation"] = self._views_first(torch.as_tensor(batchdata[self.rotation_key])).to(device=device)
        return inputs, targets


class _Criterion(nn.Module):
    """A criterion computed in float32 with autocast off, keeping the detached ``terms`` of its last call."""

    def __init__(self) -> None:
        super().__init__()
        self.terms: dict[str, torch.Tensor] = {}

    def forward(self, output: Any, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        device = targets["image"].device.type
        with torch.autocast(device, enabled=False):
            return self._loss(_float32(output), _float32(targets))

    def _loss(self, output: Any, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError


def _float32(value: Any) -> Any:
    """Floating tensors (also inside a dict) at least float32; other values as they are."""
    if isinstance(value, dict):
        return {k: _float32(v) for k, v in value.items()}
    return at_least_float32(value) if torch.is_tensor(value) and value.is_floating_point() else value


class SimMIMCriterion(_Criterion):
    """SimMIM's loss: :func:`voco_components.losses.simmim.masked_l1` of the (N, C, *roi) reconstruction against
    ``targets["image"]`` on the voxels of the masked units ``targets["mask"]`` (N, *units)."""

    def _loss(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        mask = expand_mask(targets["mask"], output.shape[2:])
        loss = masked_l1(output, targets["image"], mask)
        self.terms = {"masked_l1": loss.detach()}
        return loss


class SwinSSLCriterion(_Criterion):
    """Swin UNETR's self-supervised loss (:class:`voco_components.losses.swin_ssl.SwinSSLLoss`) of the
    :class:`voco_components.networks.swin_ssl.SwinSSLNet` output against a :class:`TwoViewPrepareBatch` target."""

    def __init__(self, temperature: float = 0.5, weights: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> None:
        super().__init__()
        self.loss = SwinSSLLoss(temperature, weights)

    def _loss(self, output: dict[str, torch.Tensor], targets: dict[str, torch.Tensor]) -> torch.Tensor:
        loss = self.loss(
            output["rotation"], targets["rotation"], output["embedding"], output["reconstruction"], targets["image"]
        )
        self.terms = self.loss.terms
        return loss


class SimCLRCriterion(_Criterion):
    """NT-Xent over the global batch (:class:`voco_components.losses.contrastive.GatheredContrastiveLoss`) of the
    (2M, D) projections of a :class:`TwoViewPrepareBatch` batch: rows i and M + i are positives."""

    def __init__(self, temperature: float = 0.1) -> None:
        super().__init__()
        self.loss = GatheredContrastiveLoss(temperature)

    def _loss(self, output: torch.Tensor, targets: dict[str, torch.Tensor]) -> torch.Tensor:
        if output.ndim != 2 or output.shape[0] % 2:
            raise ValueError(f"SimCLR needs (2M, D) projections of M view pairs, got {tuple(output.shape)}.")
        half = output.shape[0] // 2
        loss = self.loss(output[:half], output[half:])
        self.terms = {"nt_xent": loss.detach()}
        return loss
