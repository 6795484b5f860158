"""The VoCo crops and position labels, volume loading and checks, and the CT preprocessing pipelines."""

from .crops import VoCoCropd
from .io import AboveThreshold, CheckVolumed, LoadVolumed
from .labels import SPATIAL_DIMS, base_boxes, position_labels, spatial_sizes
from .pipelines import ct_preprocessing, mri_preprocessing

__all__ = [
    "VoCoCropd",
    "AboveThreshold",
    "CheckVolumed",
    "LoadVolumed",
    "SPATIAL_DIMS",
    "base_boxes",
    "position_labels",
    "spatial_sizes",
    "ct_preprocessing",
    "mri_preprocessing",
]
