"""Encoders with SwinUNETR's key names, the VoCo projector, the baseline methods' networks (SimMIM, Swin UNETR's
self-supervised heads, SimCLR), SDPA window attention, freezing, and the pretrained-weight loader."""

from .attention import (
    ATTENTION_KINDS,
    MASK_ALIGNMENT,
    MASK_VALUE,
    MaskCachingBasicLayer,
    SDPAWindowAttention,
    set_window_attention,
    shifted_window_mask,
    swin_unetr,
    window_attention,
)
from .encoders import SwinClassifier, SwinEncoder, SwinLinearProbe, UNetEncoder, pool_and_concat, probe_features
from .freezing import freeze
from .simclr import MLPProjector, SimCLRNet
from .simmim import SimMIMNet
from .swin_ssl import ReconstructionHead, SwinSSLNet
from .voco_net import ProjectionHead, VoCoNet, VoCoTeacherStudent
from .weights import LoadReport, adapt_input_channels, load_pretrained, normalise_state_dict

__all__ = [
    "ATTENTION_KINDS",
    "MASK_ALIGNMENT",
    "MASK_VALUE",
    "MaskCachingBasicLayer",
    "SDPAWindowAttention",
    "set_window_attention",
    "shifted_window_mask",
    "swin_unetr",
    "window_attention",
    "SwinClassifier",
    "SwinEncoder",
    "SwinLinearProbe",
    "UNetEncoder",
    "pool_and_concat",
    "probe_features",
    "freeze",
    "MLPProjector",
    "SimCLRNet",
    "SimMIMNet",
    "ReconstructionHead",
    "SwinSSLNet",
    "ProjectionHead",
    "VoCoNet",
    "VoCoTeacherStudent",
    "LoadReport",
    "adapt_input_channels",
    "load_pretrained",
    "normalise_state_dict",
]
