"""The VoCo losses: the paper's (Eq. 1-7) and the public author code's variant."""

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
    "OfficialVoCoLoss",
    "VoCoLoss",
    "position_logits",
    "prediction_loss",
    "regularization_loss",
    "split_prediction_loss",
    "squared_relu_regularization_loss",
    "symmetric_relu_logits",
]
