"""The VoCo crops and position labels, volume loading and checks, and the CT preprocessing pipelines."""

from .crops import VoCoCropd
from .io import AboveThreshold, CheckVolumed, LoadVolumed
from .labels import base_boxes, position_labels
from .pipelines import ct_preprocessing, mri_preprocessing

__all__ = [
    "VoCoCropd",
    "AboveThreshold",
    "CheckVolumed",
    "LoadVolumed",
    "base_boxes",
    "position_labels",
    "ct_preprocessing",
    "mri_preprocessing",
]
