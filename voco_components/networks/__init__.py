"""Encoders with SwinUNETR's key names, the VoCo projector, the baseline methods' networks (SimMIM, Swin UNETR's
self-supervised heads, SimCLR), SDPA window attention, freezing, the pretrained-weight loader and the registry of
published encoders."""

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
from .encoders import (
    SWIN_ENCODER_BLOCKS,
    ResNet18Classifier,
    ResNet18Encoder,
    SwinClassifier,
    SwinEncoder,
    SwinLinearProbe,
    UNetClassifier,
    UNetEncoder,
    pool_and_concat,
    probe_features,
)
from .freezing import freeze
from .pretrained_registry import (
    PRETRAINED_WEIGHTS,
    WEIGHTS_CACHE_ENV,
    WEIGHTS_REGISTRY_ENV,
    PretrainedWeights,
    check_architecture,
    default_weights_cache,
    fetch_pretrained,
    find_pretrained,
    pretrained_entries,
    register,
    swin_architecture,
)
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
    "SWIN_ENCODER_BLOCKS",
    "SwinClassifier",
    "SwinEncoder",
    "SwinLinearProbe",
    "UNetClassifier",
    "UNetEncoder",
    "ResNet18Encoder",
    "ResNet18Classifier",
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
    "PRETRAINED_WEIGHTS",
    "WEIGHTS_CACHE_ENV",
    "WEIGHTS_REGISTRY_ENV",
    "PretrainedWeights",
    "check_architecture",
    "default_weights_cache",
    "fetch_pretrained",
    "find_pretrained",
    "pretrained_entries",
    "register",
    "swin_architecture",
    "LoadReport",
    "adapt_input_channels",
    "load_pretrained",
    "normalise_state_dict",
]
