"""The VoCo crops and position labels, volume and radiograph loading and checks, and the CT and radiograph
preprocessing pipelines."""

from .crops import VoCoCropd
from .io import AboveThreshold, CheckVolumed, LoadVolumed
from .labels import SPATIAL_DIMS, base_boxes, position_labels, spatial_sizes
from .pipelines import ct_preprocessing, mri_preprocessing
from .radiograph import DICOM_SUFFIXES, LoadRadiographd, radiograph_preprocessing, read_radiograph

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
    "DICOM_SUFFIXES",
    "LoadRadiographd",
    "radiograph_preprocessing",
    "read_radiograph",
]
