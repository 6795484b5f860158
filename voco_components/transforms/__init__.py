"""The VoCo crops and position labels, volume loading (files and DICOM series) and checks, and the CT preprocessing
pipelines."""

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
from .labels import base_boxes, position_labels
from .pipelines import ct_preprocessing, mri_preprocessing

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
    "base_boxes",
    "position_labels",
    "ct_preprocessing",
    "mri_preprocessing",
]
