"""Loading radiographs (PNG, JPEG, DICOM) as 2D images, and their deterministic preprocessing."""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureTyped, MapTransform, Resized, ScaleIntensityRangePercentilesd
from PIL import Image, UnidentifiedImageError

from voco_components.transforms.io import CheckVolumed
from voco_components.utils import VolumeError

__all__ = [
    "DICOM_SUFFIXES",
    "read_radiograph",
    "LoadRadiographd",
    "radiograph_preprocessing",
]

DICOM_SUFFIXES = (".dcm", ".dicom")
_INTEGER_MODES = {"I;16": np.uint16, "I;16B": np.uint16, "I;16L": np.uint16, "I": np.int32, "F": np.float32}


def _is_dicom(path: Path) -> bool:
    """A ``.dcm`` file, or any file with the DICOM preamble's ``DICM`` marker at byte 128."""
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    with open(path, "rb") as handle:
        handle.seek(128)
        return handle.read(4) == b"DICM"


def _read_dicom(path: Path) -> np.ndarray:
    """The (rows, columns) pixel values of a single-frame grayscale DICOM, bright where attenuation is high."""
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut
    except ImportError as exc:
        raise VolumeError(f"{path}: reading DICOM needs pydicom: pip install pydicom") from exc
    dataset = pydicom.dcmread(path)
    if int(dataset.get("NumberOfFrames", 1) or 1) != 1 or int(dataset.get("SamplesPerPixel", 1)) != 1:
        raise VolumeError(
            f"{path}: expected a single-frame grayscale radiograph, got {dataset.get('NumberOfFrames', 1)} frames "
            f"of {dataset.get('SamplesPerPixel', 1)} samples per pixel."
        )
    pixels = apply_modality_lut(dataset.pixel_array, dataset).astype(np.float32)
    if dataset.get("PhotometricInterpretation") == "MONOCHROME1":  # low values are bright: invert
        pixels = pixels.max() + pixels.min() - pixels
    return pixels


def _read_picture(path: Path) -> np.ndarray:
    """The (rows, columns) values of a PNG or JPEG: 16-bit and float images as they are, colour as luminance."""
    with Image.open(path) as image:
        if image.mode in _INTEGER_MODES:
            return np.asarray(image, dtype=_INTEGER_MODES[image.mode]).astype(np.float32)
        return np.asarray(image.convert("L"), dtype=np.float32)


def read_radiograph(path: str | Path) -> np.ndarray:
    """One radiograph as a float32 (X, Y) array: axis 0 runs along the image width (columns, left to right),
    axis 1 along its height (rows, top to bottom), as MONAI reads 2D images.

    PNG and JPEG (8 or 16 bits, grayscale or colour, which becomes its luminance) through Pillow; DICOM
    (``.dcm`` or any file with the DICOM marker) through pydicom, with its modality LUT applied and
    MONOCHROME1 inverted, so that bone is bright in every format.

    Raises:
        VolumeError: the file is missing or unreadable, or a DICOM file is not one grayscale frame; the message
            names the file.
    """
    path = Path(path)
    if not path.is_file():
        raise VolumeError(f"{path}: file not found.")
    try:
        pixels = _read_dicom(path) if _is_dicom(path) else _read_picture(path)
    except VolumeError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, AttributeError, KeyError) as exc:
        raise VolumeError(f"{path}: cannot be read as a radiograph ({type(exc).__name__}: {exc}).") from exc
    if pixels.ndim != 2:
        raise VolumeError(f"{path}: expected a 2D radiograph, got an array of shape {pixels.shape}.")
    return np.ascontiguousarray(pixels.T)


class LoadRadiographd(MapTransform):
    """Load radiographs into channel-first float32 ``MetaTensor`` images (1, X, Y) (see :func:`read_radiograph`);
    ``meta['filename_or_obj']`` is the file, so that later errors name it."""

    def __init__(self, keys: KeysCollection, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            path = d[key]
            pixels = torch.from_numpy(read_radiograph(path))[None]
            d[key] = MetaTensor(pixels, affine=torch.eye(3, dtype=torch.float64), meta={"filename_or_obj": str(path)})
        return d


def radiograph_preprocessing(
    image_key: str = "image",
    spatial_size: Sequence[int] = (224, 224),
    percentiles: Sequence[float] = (0.5, 99.5),
    allow_non_finite: bool = False,
) -> Compose:
    """Load -> check -> window between the image's own ``percentiles`` to [0, 1] -> resize to ``spatial_size``.

    Every radiograph, whatever its format and bit depth (8-bit PNG, 16-bit PNG, raw DICOM values), is scaled by
    the intensities at its own lower and upper percentile, clipped, then resized (bilinear, smoothed first when
    shrinking, so a 1024-pixel image does not alias) to ``spatial_size``: the whole image is the input, as in
    the ChestX-ray14 literature; a non-square image is stretched to it.

    Returns:
        a ``Compose`` whose output image is float32 (1, *spatial_size).
    """
    if len(spatial_size) != 2 or len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100:
        raise ValueError(
            f"spatial_size needs 2 sizes and percentiles 2 increasing values in [0, 100], got {spatial_size} and "
            f"{percentiles}."
        )
    return Compose(
        [
            LoadRadiographd(keys=image_key),
            CheckVolumed(keys=image_key, allow_non_finite=allow_non_finite, spatial_dims=2),
            ScaleIntensityRangePercentilesd(
                keys=image_key,
                lower=float(percentiles[0]),
                upper=float(percentiles[1]),
                b_min=0.0,
                b_max=1.0,
                clip=True,
            ),
            Resized(
                keys=image_key, spatial_size=tuple(int(s) for s in spatial_size), mode="bilinear", anti_aliasing=True
            ),
            EnsureTyped(keys=image_key, dtype=torch.float32, track_meta=False),
        ]
    )
