"""The VoCo crops and position labels, the baseline methods' masks and views, volume (files and DICOM series)
and radiograph loading and checks, and the CT and radiograph preprocessing pipelines."""

from .crops import VoCoCropd
from .dicom import (
    NON_IMAGE_SOP_CLASSES,
    ORIENTATION_TOLERANCE,
    SPACING_TOLERANCE,
    DicomSeries,
    DicomSeriesReader,
    is_dicom_file,
    is_dicom_folder,
    read_dicom_series,
)
from .io import AboveThreshold, CheckVolumed, LoadVolumed, volume_name_formatter
from .labels import SPATIAL_DIMS, base_boxes, position_labels, spatial_sizes
from .masking import MaskedCropsd, expand_mask, random_unit_mask, unit_grid
from .pipelines import ct_preprocessing, mri_preprocessing
from .radiograph import DICOM_SUFFIXES, LoadRadiographd, radiograph_preprocessing, read_radiograph
from .views import OverlappingViewsd, RotationCutoutViewsd, crop_at, positive_triple, random_starts, volume_tensor

__all__ = [
    "VoCoCropd",
    "NON_IMAGE_SOP_CLASSES",
    "ORIENTATION_TOLERANCE",
    "SPACING_TOLERANCE",
    "DicomSeries",
    "DicomSeriesReader",
    "is_dicom_file",
    "is_dicom_folder",
    "read_dicom_series",
    "AboveThreshold",
    "CheckVolumed",
    "LoadVolumed",
    "volume_name_formatter",
    "SPATIAL_DIMS",
    "base_boxes",
    "position_labels",
    "spatial_sizes",
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
    "DICOM_SUFFIXES",
    "LoadRadiographd",
    "radiograph_preprocessing",
    "read_radiograph",
]
