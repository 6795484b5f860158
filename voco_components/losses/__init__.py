"""The VoCo losses (the paper's Eq. 1-7 and the public author code's variant) and those of the baseline methods:
SimMIM's masked L1, NT-Xent over the global batch, and Swin UNETR's self-supervised loss."""

from .contrastive import GatheredContrastiveLoss, gather_with_gradients
from .simmim import MaskedL1Loss, masked_l1
from .swin_ssl import SwinSSLLoss
from .voco import (
    OfficialVoCoLoss,
    VoCoLoss,
    position_logits,
    prediction_loss,
    regularization_loss,
    split_prediction_loss,
    squared_relu_regularization_loss,
    symmetric_relu_logits,
)

__all__ = [
    "GatheredContrastiveLoss",
    "gather_with_gradients",
    "MaskedL1Loss",
    "masked_l1",
    "SwinSSLLoss",
    "OfficialVoCoLoss",
    "VoCoLoss",
    "position_logits",
    "prediction_loss",
    "regularization_loss",
    "split_prediction_loss",
    "squared_relu_regularization_loss",
    "symmetric_relu_logits",
]
