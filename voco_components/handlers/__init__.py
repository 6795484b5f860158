"""Every Ignite handler of the bundles: checkpoints, last step, EMA teacher, loss terms, GradScaler, export,
online probe, training cost, and the Dice, classification (single- and multi-label) and feature writers."""

from .checkpoint import BestMetricSaver, ResumeHandler, StepCheckpointSaver
from .classification import ClassificationReport, ProbabilityCollector, ProbabilityWriter, write_probabilities
from .dice_table import DiceTableWriter
from .ema_teacher import EMATeacherHandler
from .export import EncoderExportHandler, ModelExportHandler
from .feature_writer import FeatureWriter
from .grad_scaler import GradScalerHandler
from .last_step import LastStepHandler
from .loss_terms import LossTermsHandler
from .multilabel import MultiLabelProbabilityWriter, MultiLabelReport, write_multilabel_probabilities
from .online_probe import OnlineProbeHandler
from .training_cost import TrainingCostHandler, crops_in, peak_memory_mib

__all__ = [
    "BestMetricSaver",
    "ResumeHandler",
    "StepCheckpointSaver",
    "ClassificationReport",
    "ProbabilityCollector",
    "ProbabilityWriter",
    "write_probabilities",
    "DiceTableWriter",
    "EMATeacherHandler",
    "EncoderExportHandler",
    "ModelExportHandler",
    "FeatureWriter",
    "GradScalerHandler",
    "LastStepHandler",
    "LossTermsHandler",
    "MultiLabelProbabilityWriter",
    "MultiLabelReport",
    "write_multilabel_probabilities",
    "OnlineProbeHandler",
    "TrainingCostHandler",
    "crops_in",
    "peak_memory_mib",
]
