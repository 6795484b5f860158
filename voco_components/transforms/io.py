"""Loading input volumes and checking them, with errors that name the file."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from monai.config import KeysCollection
from monai.data.folder_layout import default_name_formatter
from monai.transforms import LoadImaged, MapTransform
from monai.utils import ImageMetaKey

from voco_components.transforms.dicom import DicomSeriesReader
from voco_components.utils import VolumeError, volume_name, volume_stem

__all__ = [
    "LoadVolumed",
    "CheckVolumed",
    "AboveThreshold",
    "volume_name_formatter",
]


class LoadVolumed(LoadImaged):
    """``LoadImaged`` that also reads DICOM series folders, and whose failures (missing, truncated or unreadable
    files) raise :class:`VolumeError` naming the file, instead of an anonymous reader error.

    Without a ``reader``, a folder is read as one DICOM series by :class:`DicomSeriesReader` (checked first: one
    series, no localizer, no missing slice; slices in position order), a file by MONAI's reader for its ending.
    Other arguments are ``LoadImaged``'s.
    """

    def __init__(self, keys: KeysCollection, reader: Any = None, *args: Any, **kwargs: Any) -> None:
        super().__init__(keys, reader, *args, **kwargs)
        if reader is None:
            self._loader.register(DicomSeriesReader())

    def __call__(self, data: Mapping[Hashable, Any], reader: Any = None) -> dict[Hashable, Any]:
        for key in self.key_iterator(dict(data)):
            path = data[key]
            if isinstance(path, (str, Path)) and not Path(path).exists():
                raise VolumeError(f"{path}: file not found.")
        try:
            return super().__call__(data, reader)
        except VolumeError:
            raise
        except Exception as exc:
            names = ", ".join(str(data[k]) for k in self.key_iterator(dict(data)))
            raise VolumeError(f"{names}: cannot be read ({type(exc).__name__}: {exc}).") from exc


class CheckVolumed(MapTransform):
    """Reject volumes that would train on garbage, naming the file.

    Checks that each image is channel-first 3D (C, X, Y, Z) (or 2D (C, X, Y) with ``spatial_dims`` 2),
    optionally that every voxel is finite, and that each spatial size is at least ``min_size`` (use it
    after foreground cropping to catch volumes with almost no foreground).

    Args:
        keys: images to check.
        min_size: smallest allowed spatial size per axis, or None for no check.
        allow_non_finite: accept NaN and inf voxels.
        spatial_dims: 3 for volumes, 2 for images (radiographs).
    """

    def __init__(
        self,
        keys: KeysCollection,
        min_size: Sequence[int] | None = None,
        allow_non_finite: bool = False,
        allow_missing_keys: bool = False,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.min_size = None if min_size is None else tuple(int(s) for s in min_size)
        self.allow_non_finite = allow_non_finite
        self.spatial_dims = int(spatial_dims)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            image = d[key]
            name = volume_name(image, fallback=f"'{key}'")
            shape = tuple(image.shape)
            if len(shape) != self.spatial_dims + 1:
                kind = (
                    "a 3D volume with a channel axis (C, X, Y, Z)" if self.spatial_dims == 3 else "a 2D image (C, X, Y)"
                )
                raise VolumeError(f"{name}: expected {kind}, got shape {shape}.")
            if not self.allow_non_finite:
                tensor = torch.as_tensor(image)
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    bad = int((~torch.isfinite(tensor)).sum())
                    raise VolumeError(f"{name}: {bad} voxels are NaN or infinite.")
            if self.min_size is not None and any(s < m for s, m in zip(shape[1:], self.min_size, strict=True)):
                raise VolumeError(
                    f"{name}: spatial size {shape[1:]} is smaller than the minimum {self.min_size} "
                    "(after foreground cropping: too little foreground for a VoCo region)."
                )
        return d


class AboveThreshold:
    """Picklable ``select_fn`` for ``CropForegroundd``: voxels strictly above ``threshold`` are foreground."""

    def __init__(self, threshold: float = 0.0) -> None:
        if not math.isfinite(threshold):
            raise ValueError(f"threshold must be finite, got {threshold}.")
        self.threshold = threshold

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image > self.threshold


def volume_name_formatter(metadict: Mapping[str, Any] | None, saver: Any) -> dict[str, Any]:
    """``output_name_formatter`` for ``SaveImage(d)`` that names an output after its input's
    :func:`voco_components.utils.volume_stem`: a DICOM series folder ``/data/1.2.840.113619.2.55`` gives
    ``1.2.840.113619.2.55_seg.nii.gz`` (MONAI's default takes the folder's last ``.55`` for a file ending and
    drops it); files are named as by MONAI's default (``case_01.nii.gz`` -> ``case_01_seg.nii.gz``)."""
    source = (metadict or {}).get(ImageMetaKey.FILENAME_OR_OBJ)
    if not isinstance(source, (str, Path)) or not str(source):
        return default_name_formatter(metadict, saver)
    subject = Path(source).parent / f"{volume_stem(source)}.nii.gz"  # the ending MONAI strips again
    return {"subject": str(subject), "idx": (metadict or {}).get(ImageMetaKey.PATCH_INDEX)}
