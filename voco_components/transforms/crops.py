"""The VoCo crop transform: base crops, random crops and their position labels from one 2D image or 3D volume."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import MapTransform, Randomizable
from monai.utils import convert_to_tensor

from voco_components.transforms.labels import base_boxes, position_labels, spatial_sizes
from voco_components.utils import volume_name

__all__ = ["VoCoCropd"]


class VoCoCropd(Randomizable, MapTransform):
    """Cut a volume or an image into the n base crops and k random crops of VoCo and compute their position labels.

    The number of spatial axes d follows ``region_size``: three for CT or MRI volumes (the paper), two for
    radiographs (the paper's appendix C.2), everything else being the same. The input (channel-first,
    spatial shape of any size) is resampled once, trilinearly (bilinearly in 2D), to the sampling
    grid ``grid * roi_size`` (256×256×64 for the defaults): the paper's ``region_size`` region
    (384×384×64) at the scale of the ``roi_size`` crops. This samples the same points as resizing to
    ``region_size`` and then resizing each crop to ``roi_size``, with one interpolation instead of n + k.
    An input that already has the sampling-grid shape (what cached preprocessing should store) is only
    sliced. Base crops are the grid cells; random crops of ``crop_size`` (region units, one cell by
    default) lie fully inside the region, at integer positions of the sampling grid. When a random crop
    does not map to exactly ``roi_size`` sampling-grid voxels it is resampled (tri- or bilinearly) to ``roi_size``.

    Writes, for every key in ``keys`` (all cropped at the same boxes with the same augmentation), plain
    tensors: the crops no longer have one affine, so a ``MetaTensor`` input's metadata is not carried over.

    uint8 volumes (the prepared cache's, ``q / 255`` standing for the windowed value) are never
    converted to float as a whole: the crops are sliced and flipped/rotated as uint8 and stay uint8,
    so that they travel 4× smaller to the training device; the intensity offsets, which act on the
    [0, 1] values and may leave [0, 1], are written to ``shift_key`` instead of being added, and
    :class:`voco_components.engines.workflow.VoCoPrepareBatch` computes ``crop / 255 + offset`` on the device.
    A uint8 volume off the sampling grid is resized in float and rounded back, and random crops that need
    resampling are interpolated in float per crop box and rounded back (error at most 1/255 against the
    float volume instead of 1/510); the prepared cache stores the sampling grid, so neither happens there.
    Float volumes (float32, or the cache's float16) and other integer volumes (converted to float32 first,
    e.g. raw HU) give float crops with the offsets added.

    - ``key``: tensor (n + k, C, *roi_size), float32 (float64 for float64 input, uint8 for uint8 input), the n base
      crops first (C order over the grid, see :func:`voco_components.transforms.labels.base_boxes`), then the k
      random crops;
    - ``label_key``: float32 (k, n) position labels of the random crops (overlap fractions of volume, or of
      area in 2D);
    - ``box_key``: float32 (n + k, d, 2) ``[start, end)`` of every crop in region coordinates;
    - ``shift_key``: float32 (n + k,) intensity offsets per crop, only when a key holds a uint8 volume.

    Args:
        keys: keys of the channel-first images to crop, (C, X, Y, Z) in 3D or (C, X, Y) in 2D.
        region_size: the region the input stands for, in the paper's units (384×384×64); two numbers for 2D.
        grid: base cells per axis; ``region_size`` must be divisible by it.
        roi_size: spatial size of every output crop, one number per axis of ``region_size``.
        num_crops: k, the number of random crops.
        crop_size: random-crop size in region units; one base cell when None.
        label_key: where the (k, n) position labels go.
        box_key: where the (n + k, d, 2) crop boxes go.
        shift_key: where the (n + k,) intensity offsets of uint8 crops go.
        flip_prob: per crop and per spatial axis, the probability of a flip.
        rot90_prob: per crop, the probability of a rotation by 90, 180 or 270 degrees in the first two
            spatial axes (needs equal ``roi_size`` on those axes).
        shift_intensity_prob: per crop, the probability of adding an offset drawn from
            U(-shift_intensity_offset, shift_intensity_offset).
        shift_intensity_offset: largest absolute intensity offset.
        allow_missing_keys: do not raise when a key is missing.
    """

    def __init__(
        self,
        keys: KeysCollection,
        region_size: Sequence[int] = (384, 384, 64),
        grid: Sequence[int] = (4, 4, 1),
        roi_size: Sequence[int] = (64, 64, 64),
        num_crops: int = 4,
        crop_size: Sequence[float] | None = None,
        label_key: str = "label",
        box_key: str = "voco_boxes",
        shift_key: str = "voco_shift",
        flip_prob: float = 0.0,
        rot90_prob: float = 0.0,
        shift_intensity_prob: float = 0.0,
        shift_intensity_offset: float = 0.1,
        allow_missing_keys: bool = False,
    ) -> None:
        MapTransform.__init__(self, keys, allow_missing_keys)
        self.region_size = self._positive_integers(region_size, "region_size", None)
        self.dims = self.region_size.numel()
        self.grid = self._positive_integers(grid, "grid", self.dims)
        self.roi_size = self._positive_integers(roi_size, "roi_size", self.dims)
        self.base = base_boxes(self.region_size, self.grid)  # raises when not divisible
        cell = self.region_size / self.grid
        self.crop_size = cell.clone() if crop_size is None else torch.as_tensor(crop_size, dtype=torch.float64)
        if self.crop_size.numel() != self.dims or bool((self.crop_size <= 0).any()):
            raise ValueError(f"crop_size must be {self.dims} positive numbers, got {self.crop_size.tolist()}.")
        if bool((self.crop_size > self.region_size).any()):
            raise ValueError(
                f"crop_size {self.crop_size.tolist()} is larger than region_size {self.region_size.tolist()}: "
                "random crops must fit inside the region."
            )
        if int(num_crops) < 1:
            raise ValueError(f"num_crops must be at least 1, got {num_crops}.")
        for name, prob in (
            ("flip_prob", flip_prob),
            ("rot90_prob", rot90_prob),
            ("shift_intensity_prob", shift_intensity_prob),
        ):
            if not 0.0 <= prob <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {prob}.")
        if shift_intensity_offset < 0:
            raise ValueError(f"shift_intensity_offset must be non-negative, got {shift_intensity_offset}.")
        if rot90_prob > 0 and self.roi_size[0] != self.roi_size[1]:
            raise ValueError(f"rot90 needs equal roi_size on the first two axes, got {self.roi_size.tolist()}.")
        self.num_crops = int(num_crops)
        self.label_key = label_key
        self.box_key = box_key
        self.shift_key = shift_key
        self.flip_prob = flip_prob
        self.rot90_prob = rot90_prob
        self.shift_intensity_prob = shift_intensity_prob
        self.shift_intensity_offset = shift_intensity_offset
        self.sampling_shape = (self.grid * self.roi_size).long()
        self.scale = self.sampling_shape / self.region_size  # sampling-grid voxels per region unit
        self.crop_extent = self.crop_size * self.scale  # random-crop size in sampling-grid voxels
        self.slice_only = bool(torch.isclose(self.crop_extent, self.roi_size, rtol=0.0, atol=1e-6).all())
        self._starts = torch.zeros(self.num_crops, self.dims, dtype=torch.long)

    @staticmethod
    def _positive_integers(value: Sequence[int], name: str, dims: int | None) -> torch.Tensor:
        """One positive integer per spatial axis: 2 or 3 of them (``dims`` None), else exactly ``dims``."""
        wanted = "2 or 3" if dims is None else str(dims)
        try:
            sizes = spatial_sizes(value, name, dims)
        except ValueError:
            sizes = None
        if sizes is None or bool((sizes != sizes.round()).any()):
            raise ValueError(f"{name} must be {wanted} positive integers (one per spatial axis), got {value!r}.")
        return sizes

    def randomize(self, data: Any = None) -> None:
        """Draw the integer start of every random crop in the sampling grid."""
        room = torch.floor(self.sampling_shape - self.crop_extent + 1e-9).long()
        self._starts = torch.from_numpy(
            np.stack([self.R.randint(0, int(r) + 1, size=self.num_crops) for r in room], axis=1)
        ).long()

    def random_boxes(self) -> torch.Tensor:
        """The (k, d, 2) region-coordinate boxes of the random crops drawn by the last ``randomize``."""
        starts = self._starts.to(torch.float64) / self.scale
        return torch.stack((starts, starts + self.crop_size), dim=-1)

    def _to_sampling_grid(self, image: torch.Tensor) -> torch.Tensor:
        """Resample (C, *spatial) to (C, *sampling_shape), or return it as is when it already has that shape.

        An integer volume off the grid is interpolated in float and rounded back to its dtype.
        """
        shape = tuple(int(s) for s in self.sampling_shape)
        if tuple(image.shape[1:]) == shape:
            return image
        mode = "trilinear" if self.dims == 3 else "bilinear"
        resized = F.interpolate(image[None].float(), size=shape, mode=mode, align_corners=False)[0]
        return resized if image.is_floating_point() else _round_to(resized, image.dtype)

    def _crop(self, grid_image: torch.Tensor) -> torch.Tensor:
        """(C, *sampling_shape) -> (n + k, C, *roi_size): the base cells in C order, then the random crops.

        Both are copied once, straight into one preallocated output.
        """
        c, d = grid_image.shape[0], self.dims
        grid = [int(g) for g in self.grid]
        roi = [int(r) for r in self.roi_size]
        n = len(self.base)
        dtype = torch.float32 if grid_image.dtype in (torch.float16, torch.bfloat16) else grid_image.dtype
        out = grid_image.new_empty((n + self.num_crops, c, *roi), dtype=dtype)
        # (C, g0, r0, g1, r1, ...) -> (g0, g1, ..., C, r0, r1, ...): the cells in C order over the grid
        interleaved = [size for pair in zip(grid, roi, strict=True) for size in pair]
        cells = grid_image.reshape(c, *interleaved).permute(*range(1, 2 * d, 2), 0, *range(2, 2 * d + 1, 2))
        out[:n].view(*grid, c, *roi).copy_(cells)
        if self.slice_only:
            for j, start in enumerate(self._starts.tolist()):
                box = tuple(slice(s, s + r) for s, r in zip(start, roi, strict=True))
                out[n + j].copy_(grid_image[(slice(None), *box)])
        elif grid_image.dtype == dtype and dtype.is_floating_point:
            out[n:] = self._resampled_random_crops(grid_image, self._starts)
        else:  # integer or half: resample each crop's own box in float, never the whole volume
            for j in range(self.num_crops):
                box, starts = self._crop_box(j)
                crop = self._resampled_random_crops(grid_image[(slice(None), *box)].float(), starts)[0]
                out[n + j] = crop if dtype.is_floating_point else _round_to(crop, dtype)
        return out

    def _crop_box(self, j: int) -> tuple[tuple[slice, ...], torch.Tensor]:
        """Random crop ``j``'s voxel box in the sampling grid, one voxel of margin for the interpolation
        (clipped to the grid), and the crop's start relative to that box, (1, d)."""
        start = self._starts[j].double()
        low = torch.clamp(torch.floor(start) - 1, min=0).long()
        high = torch.minimum(torch.ceil(start + self.crop_extent).long() + 1, self.sampling_shape)
        box = tuple(slice(int(a), int(b)) for a, b in zip(low, high, strict=True))
        return box, (start - low)[None]

    def _resampled_random_crops(self, volume: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
        """(C, *spatial) float -> (k, C, *roi_size) by tri- or bilinear resampling of the k boxes of
        ``crop_extent`` voxels that start at ``starts`` (k, d), in ``volume``'s voxel coordinates."""
        roi = [int(r) for r in self.roi_size]
        d, k = self.dims, starts.shape[0]
        # one grid_sample over all k boxes (align_corners=False convention)
        size = torch.as_tensor(volume.shape[1:], dtype=torch.float64)
        coordinates = []
        for axis in reversed(range(d)):  # grid_sample wants the last spatial axis first
            step = self.crop_extent[axis] / roi[axis]
            centres = starts[:, axis, None].double() + (torch.arange(roi[axis]) + 0.5) * step  # (k, r)
            along = [k] + [1] * d
            along[axis + 1] = roi[axis]
            coordinates.append((2.0 * centres / size[axis] - 1.0).reshape(along).expand(k, *roi))
        grid = torch.stack(coordinates, dim=-1).reshape(1, k * roi[0], *roi[1:], d)
        sampled = F.grid_sample(
            volume[None], grid.to(volume.dtype), mode="bilinear", padding_mode="border", align_corners=False
        )[0]
        c = volume.shape[0]
        return sampled.reshape(c, k, *roi).transpose(0, 1)

    def _draw_augmentation(self, num: int) -> list[tuple[list[int], int, float]]:
        """Per crop: the axes to flip, the number of 90-degree turns and the intensity offset, from ``self.R``."""
        plan = []
        for _ in range(num):
            flips = [axis + 1 for axis in range(self.dims) if self.R.rand() < self.flip_prob]
            turns = int(self.R.randint(1, 4)) if self.R.rand() < self.rot90_prob else 0
            shift = 0.0
            if self.R.rand() < self.shift_intensity_prob:
                shift = float(self.R.uniform(-self.shift_intensity_offset, self.shift_intensity_offset))
            plan.append((flips, turns, shift))
        return plan

    @staticmethod
    def _augment(crops: torch.Tensor, plan: list[tuple[list[int], int, float]]) -> torch.Tensor:
        """Apply one drawn plan to (N, C, *roi) crops, the same for every key; integer crops get no
        intensity offset (it goes to ``shift_key``)."""
        shifting = crops.is_floating_point()
        out = []
        for crop, (flips, turns, shift) in zip(crops, plan, strict=True):
            if flips:
                crop = torch.flip(crop, dims=flips)
            if turns:
                crop = torch.rot90(crop, k=turns, dims=(1, 2))
            out.append(crop + shift if shift and shifting else crop)
        return torch.stack(out)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize()
        augmenting = self.flip_prob > 0 or self.rot90_prob > 0 or self.shift_intensity_prob > 0
        plan = self._draw_augmentation(len(self.base) + self.num_crops) if augmenting else None
        integer = False
        for key in self.key_iterator(d):
            value = d[key]
            image = convert_to_tensor(value.as_tensor() if isinstance(value, MetaTensor) else value, track_meta=False)
            if image.ndim != self.dims + 1:
                kind = "3D volume (C, X, Y, Z)" if self.dims == 3 else "2D image (C, X, Y)"
                raise ValueError(
                    f"VoCoCropd: '{key}' of {volume_name(value)} must be a channel-first {kind}, "
                    f"got shape {tuple(image.shape)}."
                )
            if not image.is_floating_point() and image.dtype != torch.uint8:
                image = image.float()  # other integers (e.g. raw HU) are values, not quantised [0, 1]
            crops = self._crop(self._to_sampling_grid(image))
            d[key] = self._augment(crops, plan) if plan is not None else crops
            integer = integer or not crops.is_floating_point()
        if integer:
            shifts = [shift for _, _, shift in plan] if plan is not None else [0.0] * (len(self.base) + self.num_crops)
            d[self.shift_key] = torch.tensor(shifts, dtype=torch.float32)
        boxes = self.random_boxes()
        d[self.label_key] = position_labels(boxes, self.region_size, self.grid)
        d[self.box_key] = torch.cat((self.base.to(torch.float64), boxes)).to(torch.float32)
        return d


def _round_to(values: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Float ``values`` rounded and clipped into the integer ``dtype``."""
    info = torch.iinfo(dtype)
    return values.round().clamp(info.min, info.max).to(dtype)
