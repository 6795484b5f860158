"""Glue to MONAI's Ignite workflows (batch preparation, criteria, step counting) for VoCo and the baseline methods,
the method registry, speed settings, checkpoint state, the end of a distributed run, and the encoder export."""

from .checkpoint_state import RNGState, checkpoint_steps, latest_checkpoint
from .distributed import end_distributed
from .export import encoder_state, export_encoder
from .methods import METHODS, PretrainMethod, check_method, get_method
from .speed import AMP_DTYPES, autocast_kwargs, compile_swin, default_amp_dtype, fused_adamw
from .ssl_workflow import (
    MaskedCropPrepareBatch,
    SimCLRCriterion,
    SimMIMCriterion,
    SwinSSLCriterion,
    TwoViewPrepareBatch,
    to_device_float,
)
from .workflow import VoCoCriterion, VoCoPrepareBatch, at_least_float32, epochs_for, split_crop_features

__all__ = [
    "RNGState",
    "checkpoint_steps",
    "latest_checkpoint",
    "end_distributed",
    "encoder_state",
    "export_encoder",
    "METHODS",
    "PretrainMethod",
    "check_method",
    "get_method",
    "AMP_DTYPES",
    "autocast_kwargs",
    "compile_swin",
    "default_amp_dtype",
    "fused_adamw",
    "MaskedCropPrepareBatch",
    "SimCLRCriterion",
    "SimMIMCriterion",
    "SwinSSLCriterion",
    "TwoViewPrepareBatch",
    "to_device_float",
    "VoCoCriterion",
    "VoCoPrepareBatch",
    "at_least_float32",
    "epochs_for",
    "split_crop_features",
]
