"""The deterministic CT preprocessing shared by the VoCo bundles (pretraining, segmentation, classification)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.transforms import (
    Compose,
    CropForegroundd,
    EnsureTyped,
    NormalizeIntensityd,
    Orientationd,
    Resized,
    ScaleIntensityRanged,
    Spacingd,
)

from voco_components.transforms.io import AboveThreshold, CheckVolumed, LoadVolumed

__all__ = ["ct_preprocessing", "mri_preprocessing"]


def ct_preprocessing(
    image_key: str = "image",
    label_keys: Sequence[str] = (),
    spacing: Sequence[float] = (1.5, 1.5, 1.5),
    hu_range: Sequence[float] = (-175.0, 250.0),
    foreground_threshold: float = 0.0,
    min_foreground_size: Sequence[int] | None = None,
    spatial_size: Sequence[int] | None = None,
    allow_non_finite: bool = False,
    keep_meta: bool = False,
) -> Compose:
    """Load -> check -> RAS -> resample to ``spacing`` -> HU window to [0, 1] -> crop foreground [-> resize].

    Images (volume files or DICOM series folders) are read with :class:`LoadVolumed` (errors name the file or
    folder) and checked with :class:`CheckVolumed` (channel-first 3D, finite voxels unless ``allow_non_finite``);
    labels in ``label_keys`` are resampled with nearest neighbour and cropped with the image. The foreground
    is the box of voxels above ``foreground_threshold`` after windowing (0: HU above the window's
    lower bound); it is checked against ``min_foreground_size``. With ``spatial_size``, images are
    finally resized (trilinear) to it, e.g. to the VoCo sampling grid so that a cache stores it.
    With ``keep_meta`` the output keeps its metadata and applied operations, so that ``Invertd``
    can map a prediction back onto the input's grid (inference).

    Returns:
        a ``Compose`` whose output image is float32 (C, *spatial), a MetaTensor only with ``keep_meta``.
    """
    transforms = [
        *_load_and_resample(image_key, label_keys, spacing, allow_non_finite),
        ScaleIntensityRanged(
            keys=image_key, a_min=float(hu_range[0]), a_max=float(hu_range[1]), b_min=0.0, b_max=1.0, clip=True
        ),
        CropForegroundd(
            keys=[image_key, *label_keys],
            source_key=image_key,
            select_fn=AboveThreshold(foreground_threshold),
            allow_smaller=True,
        ),
        CheckVolumed(keys=image_key, min_size=min_foreground_size, allow_non_finite=allow_non_finite),
    ]
    if spatial_size is not None:
        transforms.append(Resized(keys=image_key, spatial_size=tuple(spatial_size), mode="trilinear"))
    transforms.append(EnsureTyped(keys=image_key, dtype=torch.float32, track_meta=keep_meta))
    return Compose(transforms)


def mri_preprocessing(
    image_key: str = "image",
    label_keys: Sequence[str] = (),
    spacing: Sequence[float] = (1.0, 1.0, 1.0),
    min_foreground_size: Sequence[int] | None = None,
    allow_non_finite: bool = False,
    keep_meta: bool = False,
) -> Compose:
    """Load -> check -> RAS -> resample to ``spacing`` -> crop the non-zero box -> z-score each channel.

    For skull-stripped multi-sequence MRI such as BraTS (the sequences of one case are listed together
    as its ``image`` and stacked as channels). Each channel is normalised to zero mean and unit variance
    over its non-zero voxels; the zero background stays 0. Loading, checks, ``label_keys`` and
    ``keep_meta`` behave as in :func:`ct_preprocessing`.

    Returns:
        a ``Compose`` whose output image is float32 (C, *spatial).
    """
    return Compose(
        [
            *_load_and_resample(image_key, label_keys, spacing, allow_non_finite),
            CropForegroundd(
                keys=[image_key, *label_keys], source_key=image_key, select_fn=AboveThreshold(0.0), allow_smaller=True
            ),
            CheckVolumed(keys=image_key, min_size=min_foreground_size, allow_non_finite=allow_non_finite),
            NormalizeIntensityd(keys=image_key, nonzero=True, channel_wise=True),
            EnsureTyped(keys=image_key, dtype=torch.float32, track_meta=keep_meta),
        ]
    )


def _load_and_resample(
    image_key: str, label_keys: Sequence[str], spacing: Sequence[float], allow_non_finite: bool
) -> list:
    """Load (errors name the file), check, orient to RAS and resample; labels with nearest neighbour."""
    keys = [image_key, *label_keys]
    return [
        LoadVolumed(keys=keys, image_only=True, ensure_channel_first=True),
        CheckVolumed(keys=image_key, allow_non_finite=allow_non_finite),
        Orientationd(keys=keys, axcodes="RAS", labels=None),
        Spacingd(keys=keys, pixdim=tuple(spacing), mode=["bilinear"] + ["nearest"] * len(label_keys)),
    ]
