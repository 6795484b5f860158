"""Datalists (files, folders, globs, k folds), the step-indexed VoCo dataset, and the prepared volume cache with
its ``prepare`` step."""

from .classification_datalist import SUBSETS, load_classification_datalist, load_multilabel_datalist
from .datalists import check_unique_outputs, load_datalists, output_name, output_root, read_json, volume_files
from .dataset import (
    PreparedVolumes,
    ResumableDistributedSampler,
    VoCoStepDataset,
    hash_entry_and_files,
    sample_seed,
    volume_error_in,
)
from .folds import fold_split
from .prepare import Preparer, foreground_box, prepare_volume, this_part, unique_entries
from .volume_cache import (
    CACHE_DTYPES,
    CACHE_MODES,
    FORMAT_VERSION,
    CacheMismatchError,
    LoadCachedVolumed,
    ManifestWriter,
    VolumeCache,
    dequantise,
    entry_key,
    entry_text,
    open_cache,
    part_of,
    quantise,
    read_volume,
    write_volume,
)

__all__ = [
    "SUBSETS",
    "load_classification_datalist",
    "load_multilabel_datalist",
    "load_datalists",
    "output_root",
    "output_name",
    "check_unique_outputs",
    "read_json",
    "volume_files",
    "PreparedVolumes",
    "ResumableDistributedSampler",
    "VoCoStepDataset",
    "hash_entry_and_files",
    "sample_seed",
    "volume_error_in",
    "fold_split",
    "Preparer",
    "foreground_box",
    "prepare_volume",
    "this_part",
    "unique_entries",
    "CACHE_DTYPES",
    "CACHE_MODES",
    "FORMAT_VERSION",
    "CacheMismatchError",
    "LoadCachedVolumed",
    "ManifestWriter",
    "VolumeCache",
    "dequantise",
    "entry_key",
    "entry_text",
    "open_cache",
    "part_of",
    "quantise",
    "read_volume",
    "write_volume",
]
