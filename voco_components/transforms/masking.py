"""SimMIM's random masking (Xie et al., CVPR 2022) for 3D crops: masks over units of whole patch-embedding tokens."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection

from voco_components.transforms.views import _CropViews, crop_at, positive_triple, random_starts

__all__ = ["unit_grid", "random_unit_mask", "expand_mask", "MaskedCropsd"]


def unit_grid(roi_size: Sequence[int], mask_unit: Sequence[int], patch_size: int = 2) -> tuple[int, int, int]:
    """The number of mask units per axis of a ``roi_size`` crop cut into ``mask_unit`` voxel units.

    A unit must hold whole patch-embedding tokens (``patch_size`` voxels per axis) and tile the crop exactly.
    """
    roi, unit = positive_triple(roi_size, "roi_size"), positive_triple(mask_unit, "mask_unit")
    if any(u % patch_size for u in unit):
        raise ValueError(f"mask_unit {list(unit)} must be a multiple of the patch size {patch_size} on every axis.")
    if any(r % u for r, u in zip(roi, unit, strict=True)):
        raise ValueError(f"roi_size {list(roi)} must be divisible by mask_unit {list(unit)} on every axis.")
    return tuple(r // u for r, u in zip(roi, unit, strict=True))  # type: ignore[return-value]


def random_unit_mask(rng: np.random.RandomState, units: Sequence[int], ratio: float) -> torch.Tensor:
    """A bool (*units) mask with exactly ``round(ratio · prod(units))`` masked units, chosen uniformly."""
    total = int(np.prod(units))
    masked = int(round(ratio * total))
    flat = torch.zeros(total, dtype=torch.bool)
    flat[torch.from_numpy(rng.permutation(total)[:masked])] = True
    return flat.reshape(tuple(units))


def expand_mask(mask: torch.Tensor, spatial_size: Sequence[int]) -> torch.Tensor:
    """(N, *units) -> (N, *spatial_size): every unit repeated over its block (``spatial_size`` divisible by units)."""
    units = mask.shape[1:]
    if len(units) != len(spatial_size) or any(int(s) % u for s, u in zip(spatial_size, units, strict=True)):
        raise ValueError(f"a mask of {tuple(units)} units cannot be expanded to {tuple(spatial_size)}.")
    for axis, (s, u) in enumerate(zip(spatial_size, units, strict=True)):
        mask = mask.repeat_interleave(int(s) // u, dim=axis + 1)
    return mask


class MaskedCropsd(_CropViews):
    """``num_crops`` random crops of ``roi_size`` per volume, each with its own SimMIM mask.

    A crop is cut into units of ``mask_unit`` voxels (whole patch-embedding tokens of ``patch_size`` voxels);
    exactly ``round(mask_ratio · units)`` of them are masked, chosen uniformly (:func:`random_unit_mask`).

    Writes ``key`` (num_crops, C, *roi_size) (uint8 stays uint8) and ``mask_key`` bool (num_crops, *units),
    ``units = roi_size // mask_unit``.
    """

    def __init__(
        self,
        keys: KeysCollection,
        roi_size: Sequence[int] = (64, 64, 64),
        num_crops: int = 1,
        mask_ratio: float = 0.6,
        mask_unit: Sequence[int] = (16, 16, 16),
        patch_size: int = 2,
        mask_key: str = "mask",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, roi_size, num_crops, allow_missing_keys)
        if not 0.0 < mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must lie in (0, 1), got {mask_ratio}.")
        self.units = unit_grid(self.roi_size, mask_unit, patch_size)
        if int(round(mask_ratio * int(np.prod(self.units)))) < 1:
            raise ValueError(f"mask_ratio {mask_ratio} of {self.units} units masks none; use smaller units.")
        self.mask_ratio = float(mask_ratio)
        self.mask_key = mask_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        volumes = self._volumes(d)
        starts = random_starts(self.R, volumes[0][1].shape[1:], self.roi_size, self.count)
        masks = torch.stack([random_unit_mask(self.R, self.units, self.mask_ratio) for _ in range(self.count)])
        for key, image in volumes:
            d[key] = torch.stack([crop_at(image, start, self.roi_size) for start in starts])
        d[self.mask_key] = masks
        return d
