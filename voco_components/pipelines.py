"""The deterministic CT preprocessing shared by the VoCo bundles (pretraining, segmentation, classification)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    Orientationd,
    Resized,
    ScaleIntensityRanged,
    Spacingd,
)

from voco_components.data import AboveThreshold, CheckVolumed, LoadVolumed

__all__ = ["ct_preprocessing"]


def ct_preprocessing(
    image_key: str = "image",
    label_keys: Sequence[str] = (),
    spacing: Sequence[float] = (1.5, 1.5, 1.5),
    hu_range: Sequence[float] = (-175.0, 250.0),
    foreground_threshold: float = 0.0,
    min_foreground_size: Sequence[int] | None = None,
    spatial_size: Sequence[int] | None = None,
    allow_non_finite: bool = False,
) -> Compose:
    """Load -> check -> RAS -> resample to ``spacing`` -> HU window to [0, 1] -> crop foreground [-> resize].

    Images are read with :class:`LoadVolumed` (errors name the file) and checked with
    :class:`CheckVolumed` (channel-first 3D, finite voxels unless ``allow_non_finite``); labels in
    ``label_keys`` are resampled with nearest neighbour and cropped with the image. The foreground
    is the box of voxels above ``foreground_threshold`` after windowing (0: HU above the window's
    lower bound); it is checked against ``min_foreground_size``. With ``spatial_size``, images are
    finally resized (trilinear) to it, e.g. to the VoCo sampling grid so that a cache stores it.

    Returns:
        a ``Compose`` whose output image is float32 (C, *spatial) without metadata tracking.
    """
    keys = [image_key, *label_keys]
    modes = ["bilinear"] + ["nearest"] * len(label_keys)
    transforms = [
        LoadVolumed(keys=keys, image_only=True, ensure_channel_first=True),
        CheckVolumed(keys=image_key, allow_non_finite=allow_non_finite),
        Orientationd(keys=keys, axcodes="RAS", labels=None),
        Spacingd(keys=keys, pixdim=tuple(spacing), mode=modes),
        ScaleIntensityRanged(
            keys=image_key, a_min=float(hu_range[0]), a_max=float(hu_range[1]), b_min=0.0, b_max=1.0, clip=True
        ),
        CropForegroundd(
            keys=keys, source_key=image_key, select_fn=AboveThreshold(foreground_threshold), allow_smaller=True
        ),
        CheckVolumed(keys=image_key, min_size=min_foreground_size, allow_non_finite=allow_non_finite),
    ]
    if spatial_size is not None:
        transforms.append(Resized(keys=image_key, spatial_size=tuple(spatial_size), mode="trilinear"))
    transforms.append(EnsureTyped(keys=image_key, dtype=torch.float32, track_meta=False))
    return Compose(transforms)
