"""Random crops and the augmented views of the baseline pretraining methods.

Every transform here takes a channel-first 3D volume (the cached sampling grid of ``voco_pretrain``, uint8 or
float) and writes stacks of ``roi_size`` crops. uint8 crops stay uint8 (they travel 4× smaller to the training
device); what acts on intensities (SimCLR's scale and offset) is written as numbers beside the crops and applied
on the device by the batch preparation of :mod:`voco_components.engines.ssl_workflow`, as for VoCo's crops.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable
from monai.utils import convert_to_tensor

from voco_components.utils import volume_name

__all__ = [
    "positive_triple",
    "volume_tensor",
    "random_starts",
    "crop_at",
    "RotationCutoutViewsd",
    "OverlappingViewsd",
]


def positive_triple(value: Sequence[int], name: str) -> tuple[int, int, int]:
    """Three positive integers, or a ``ValueError`` naming ``name``."""
    triple = tuple(int(v) for v in value)
    if (
        len(triple) != 3
        or any(v < 1 for v in triple)
        or any(float(v) != float(w) for v, w in zip(triple, value, strict=True))
    ):
        raise ValueError(f"{name} must be 3 positive integers, got {list(value)}.")
    return triple  # type: ignore[return-value]


def volume_tensor(value: Any, roi_size: Sequence[int], owner: str, key: Hashable) -> torch.Tensor:
    """A plain (C, X, Y, Z) tensor of a volume at least ``roi_size`` large: uint8 and floats as they are, other
    integers (raw values, not quantised [0, 1]) as float32; errors name the transform, key and volume."""
    image = convert_to_tensor(value.as_tensor() if isinstance(value, MetaTensor) else value, track_meta=False)
    if image.ndim != 4:
        raise ValueError(
            f"{owner}: '{key}' of {volume_name(value)} must be a channel-first 3D volume (C, X, Y, Z), "
            f"got shape {tuple(image.shape)}."
        )
    if any(s < r for s, r in zip(image.shape[1:], roi_size, strict=True)):
        raise ValueError(
            f"{owner}: '{key}' of {volume_name(value)} has spatial shape {tuple(image.shape[1:])}, smaller than "
            f"the crops {tuple(roi_size)}."
        )
    if not image.is_floating_point() and image.dtype != torch.uint8:
        image = image.float()
    return image


def random_starts(rng: np.random.RandomState, shape: Sequence[int], roi_size: Sequence[int], count: int) -> np.ndarray:
    """(count, 3) integer starts of ``roi_size`` crops lying fully inside a volume of spatial ``shape``."""
    return np.stack([rng.randint(0, s - r + 1, size=count) for s, r in zip(shape, roi_size, strict=True)], axis=1)


def crop_at(image: torch.Tensor, start: Sequence[int], roi_size: Sequence[int]) -> torch.Tensor:
    """The (C, *roi_size) box of a (C, X, Y, Z) ``image`` that starts at ``start`` (a view, not a copy)."""
    x, y, z = (int(s) for s in start)
    rx, ry, rz = roi_size
    return image[:, x : x + rx, y : y + ry, z : z + rz]


class _CropViews(Randomizable, MapTransform):
    """Shared checks and volume access of the view transforms."""

    def __init__(self, keys: KeysCollection, roi_size: Sequence[int], count: int, allow_missing_keys: bool) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.roi_size = positive_triple(roi_size, "roi_size")
        if int(count) < 1:
            raise ValueError(f"{type(self).__name__}: the number of crops per volume must be at least 1, got {count}.")
        self.count = int(count)

    def _volumes(self, d: dict[Hashable, Any]) -> list[tuple[Hashable, torch.Tensor]]:
        volumes = [
            (key, volume_tensor(d[key], self.roi_size, type(self).__name__, key)) for key in self.key_iterator(d)
        ]
        shapes = {tuple(v.shape[1:]) for _, v in volumes}
        if len(shapes) > 1:
            raise ValueError(f"{type(self).__name__}: the keys {list(self.keys)} have different shapes {shapes}.")
        return volumes


class RotationCutoutViewsd(_CropViews):
    """Swin UNETR's self-supervised views (Tang et al., CVPR 2022): per crop, two views, each rotated by a multiple
    of 90 degrees in the first two spatial axes (the 4-way rotation class is its label) and cut out in random boxes.

    ``num_crops`` crops of ``roi_size`` are drawn anywhere in the volume; each gives two views with independent
    rotations and cutouts. The views are written uncut (the reconstruction target); the cutout is a boolean mask
    that :class:`voco_components.engines.ssl_workflow.TwoViewPrepareBatch` applies on the device (filling the
    boxes with ``0``, the lower end of the intensity window). Cutout boxes have sides drawn uniformly between
    ``cutout_size[0]`` and ``cutout_size[1]`` of the crop on every axis, at uniform positions, and are added until
    at least ``cutout_ratio`` of the crop is covered.

    Writes ``key`` (num_crops, 2, C, *roi_size) (uint8 stays uint8), ``rotation_key`` int64 (num_crops, 2) with
    the number of quarter turns, and ``cutout_key`` bool (num_crops, 2, *roi_size).
    """

    def __init__(
        self,
        keys: KeysCollection,
        roi_size: Sequence[int] = (64, 64, 64),
        num_crops: int = 1,
        cutout_ratio: float = 0.3,
        cutout_size: Sequence[float] = (0.125, 0.25),
        rotation_key: str = "rotation",
        cutout_key: str = "cutout",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, roi_size, num_crops, allow_missing_keys)
        if self.roi_size[0] != self.roi_size[1]:
            raise ValueError(f"rotations in the first two axes need equal roi_size there, got {list(self.roi_size)}.")
        low, high = (float(s) for s in cutout_size)
        if not 0.0 <= cutout_ratio < 1.0 or not 0.0 < low <= high <= 1.0:
            raise ValueError(
                f"need 0 <= cutout_ratio < 1 and 0 < cutout_size[0] <= cutout_size[1] <= 1, got {cutout_ratio}, "
                f"{list(cutout_size)}."
            )
        self.cutout_ratio = float(cutout_ratio)
        self.cutout_size = (low, high)
        self.rotation_key = rotation_key
        self.cutout_key = cutout_key

    def cutout_mask(self) -> torch.Tensor:
        """A bool (*roi_size) mask of random boxes covering at least ``cutout_ratio`` of the crop (from ``self.R``)."""
        mask = torch.zeros(self.roi_size, dtype=torch.bool)
        while float(mask.float().mean()) < self.cutout_ratio:
            sides = [max(1, int(round(self.R.uniform(*self.cutout_size) * r))) for r in self.roi_size]
            start = [self.R.randint(0, r - s + 1) for r, s in zip(self.roi_size, sides, strict=True)]
            mask[tuple(slice(a, a + s) for a, s in zip(start, sides, strict=True))] = True
        return mask

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        volumes = self._volumes(d)
        starts = random_starts(self.R, volumes[0][1].shape[1:], self.roi_size, self.count)
        turns = torch.from_numpy(self.R.randint(0, 4, size=(self.count, 2))).long()
        cutouts = torch.stack([torch.stack([self.cutout_mask() for _ in range(2)]) for _ in range(self.count)])
        for key, image in volumes:
            d[key] = torch.stack(
                [
                    torch.stack([torch.rot90(crop_at(image, start, self.roi_size), int(k), dims=(1, 2)) for k in pair])
                    for start, pair in zip(starts, turns, strict=True)
                ]
            )
        d[self.rotation_key] = turns
        d[self.cutout_key] = cutouts
        return d


class OverlappingViewsd(_CropViews):
    """SimCLR's two views (Chen et al., ICML 2020) for 3D crops: two overlapping crops of one volume, each with its
    own flips, quarter turn and intensity change.

    For each of ``num_pairs`` pairs the first crop lies anywhere in the volume; the second is shifted from it by up
    to ``max_shift`` of ``roi_size`` on every axis (uniform integer shifts, kept inside the volume), so the two
    overlap. Each view is then flipped on every spatial axis with probability ``flip_prob``, turned by 90, 180 or
    270 degrees in the first two axes with probability ``rot90_prob``, and, with probability ``intensity_prob``,
    given an intensity scale from U(1 - scale, 1 + scale) and an offset from U(-shift, shift), which
    :class:`voco_components.engines.ssl_workflow.TwoViewPrepareBatch` applies (``x · scale + offset``).

    Writes ``key`` (num_pairs, 2, C, *roi_size) (uint8 stays uint8) and ``intensity_key`` float32
    (num_pairs, 2, 2) with (scale, offset) per view, (1, 0) when unchanged.
    """

    def __init__(
        self,
        keys: KeysCollection,
        roi_size: Sequence[int] = (64, 64, 64),
        num_pairs: int = 1,
        max_shift: float = 0.5,
        flip_prob: float = 0.5,
        rot90_prob: float = 0.5,
        intensity_prob: float = 0.8,
        scale: float = 0.1,
        shift: float = 0.1,
        intensity_key: str = "intensity",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, roi_size, num_pairs, allow_missing_keys)
        for name, prob in (("flip_prob", flip_prob), ("rot90_prob", rot90_prob), ("intensity_prob", intensity_prob)):
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {prob}.")
        if not 0.0 <= max_shift < 1.0 or not 0.0 <= scale < 1.0 or shift < 0.0:
            raise ValueError(
                f"need 0 <= max_shift < 1, 0 <= scale < 1 and shift >= 0, got {max_shift}, {scale}, {shift}."
            )
        if rot90_prob > 0 and self.roi_size[0] != self.roi_size[1]:
            raise ValueError(f"rot90 needs equal roi_size on the first two axes, got {list(self.roi_size)}.")
        self.max_shift = float(max_shift)
        self.flip_prob, self.rot90_prob, self.intensity_prob = (
            float(flip_prob),
            float(rot90_prob),
            float(intensity_prob),
        )
        self.scale, self.shift = float(scale), float(shift)
        self.intensity_key = intensity_key

    def pair_starts(self, shape: Sequence[int]) -> np.ndarray:
        """(num_pairs, 2, 3) starts: the first crop anywhere, the second within ``max_shift`` of it, both inside."""
        first = random_starts(self.R, shape, self.roi_size, self.count)
        reach = np.array([int(self.max_shift * r) for r in self.roi_size])
        offsets = np.stack([self.R.randint(-m, m + 1, size=self.count) for m in reach], axis=1)
        room = np.array([s - r for s, r in zip(shape, self.roi_size, strict=True)])
        second = np.clip(first + offsets, 0, room)
        return np.stack((first, second), axis=1)

    def _draw_view(self) -> tuple[list[int], int, float, float]:
        """Flipped axes (of the (C, X, Y, Z) crop), quarter turns, intensity scale and offset of one view."""
        flips = [axis + 1 for axis in range(3) if self.R.rand() < self.flip_prob]
        turns = int(self.R.randint(1, 4)) if self.R.rand() < self.rot90_prob else 0
        scale, offset = 1.0, 0.0
        if self.R.rand() < self.intensity_prob:
            scale = float(self.R.uniform(1.0 - self.scale, 1.0 + self.scale))
            offset = float(self.R.uniform(-self.shift, self.shift))
        return flips, turns, scale, offset

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        volumes = self._volumes(d)
        starts = self.pair_starts(volumes[0][1].shape[1:])
        plans = [[self._draw_view() for _ in range(2)] for _ in range(self.count)]
        for key, image in volumes:
            pairs = []
            for pair_starts, pair_plans in zip(starts, plans, strict=True):
                views = []
                for start, (flips, turns, _, _) in zip(pair_starts, pair_plans, strict=True):
                    view = crop_at(image, start, self.roi_size)
                    view = torch.flip(view, dims=flips) if flips else view
                    views.append(torch.rot90(view, turns, dims=(1, 2)) if turns else view)
                pairs.append(torch.stack(views))
            d[key] = torch.stack(pairs)
        d[self.intensity_key] = torch.tensor([[[s, o] for _, _, s, o in pair] for pair in plans], dtype=torch.float32)
        return d
