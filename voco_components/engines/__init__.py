"""Glue to MONAI's Ignite workflows (batch preparation, criterion, step counting), speed settings, checkpoint
state, and the encoder export."""

from .checkpoint_state import RNGState, checkpoint_steps, latest_checkpoint
from .export import encoder_state, export_encoder
from .speed import AMP_DTYPES, autocast_kwargs, compile_swin, default_amp_dtype, fused_adamw
from .workflow import VoCoCriterion, VoCoPrepareBatch, epochs_for, split_crop_features

__all__ = [
    "RNGState",
    "checkpoint_steps",
    "latest_checkpoint",
    "encoder_state",
    "export_encoder",
    "AMP_DTYPES",
    "autocast_kwargs",
    "compile_swin",
    "default_amp_dtype",
    "fused_adamw",
    "VoCoCriterion",
    "VoCoPrepareBatch",
    "epochs_for",
    "split_crop_features",
]
