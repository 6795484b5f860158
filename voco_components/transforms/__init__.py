"""The VoCo crops and position labels, the baseline methods' masks and views, volume loading and checks, and the CT
preprocessing pipelines."""

from .crops import VoCoCropd
from .io import AboveThreshold, CheckVolumed, LoadVolumed
from .labels import base_boxes, position_labels
from .masking import MaskedCropsd, expand_mask, random_unit_mask, unit_grid
from .pipelines import ct_preprocessing, mri_preprocessing
from .views import OverlappingViewsd, RotationCutoutViewsd, crop_at, positive_triple, random_starts, volume_tensor

__all__ = [
    "VoCoCropd",
    "AboveThreshold",
    "CheckVolumed",
    "LoadVolumed",
    "base_boxes",
    "position_labels",
    "MaskedCropsd",
    "expand_mask",
    "random_unit_mask",
    "unit_grid",
    "ct_preprocessing",
    "mri_preprocessing",
    "OverlappingViewsd",
    "RotationCutoutViewsd",
    "crop_at",
    "positive_triple",
    "random_starts",
    "volume_tensor",
]
