"""A MONAI Label app that serves the VoCo bundles: segmentation and volume classification side by side.

MONAI Label's generic ``monaibundle`` app treats every bundle as a segmentation model unless its folder name
says otherwise, and it restores each prediction onto the input image's grid. That restore turns a
classification bundle's class probabilities (C,) into an image. This app reads each bundle's
``metadata.json`` instead: a bundle whose ``pred`` output has ``format`` ``classes`` is served as a
classification model without the restore (the answer is a JSON list of class scores), any other as a
segmentation model. Segmentation bundles can also be trained from labels saved in the datastore, as often
as the labels grow: each training moves the previous one's checkpoints into
``outputs/checkpoints/earlier_runs/<n>`` (the bundles' ``existing_checkpoints: archive``) instead of refusing
to start beside them. Classification bundles are inference-only here, since the datastore holds label
images, not class labels.

Put the bundles under ``<app>/model/<name>/`` and start the server with, for example::

    python -m monailabel.main start_server --app monailabel_app --studies /data/ct \\
        --conf models voco_btcv_seg,voco_covid_cls --conf zoo_source github
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import monailabel
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask
from monailabel.utils.others.generic import get_bundle_models

logger = logging.getLogger(__name__)


def is_classification_bundle(bundle_dir: str | Path) -> bool:
    """Whether the bundle's ``pred`` output is a vector of class scores (metadata ``format`` ``classes``)."""
    metadata = json.loads((Path(bundle_dir) / "configs" / "metadata.json").read_text())
    outputs = metadata["network_data_format"]["outputs"]
    return next(iter(outputs.values())).get("format") == "classes"


class RepeatableBundleTrainTask(BundleTrainTask):
    """MONAI Label's bundle training, set up to run again and again in the same bundle folder."""

    def _update_overrides(self, overrides: dict) -> dict:
        overrides["existing_checkpoints"] = "archive"
        return overrides


class VoCoApp(MONAILabelApp):
    """Serves the bundles named by ``--conf models a,b`` from ``<app>/model/``, each as its metadata asks."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.models = get_bundle_models(app_dir, conf)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="VoCo bundles",
            description="Segmentation and classification bundles fine-tuned from VoCo-pretrained encoders",
            version=monailabel.__version__,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, path in self.models.items():
            if is_classification_bundle(path):
                task = BundleInferTask(path, self.conf, type=InferType.CLASSIFICATION, add_post_restore=False)
            else:
                task = BundleInferTask(path, self.conf, type=InferType.SEGMENTATION)
            if task.is_valid():
                logger.info(f"+++ Adding inference task {name} ({task.type}) from {path}")
                infers[name] = task
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        trainers: dict[str, TrainTask] = {}
        for name, path in self.models.items():
            if is_classification_bundle(path):
                continue
            task = RepeatableBundleTrainTask(path, self.conf)
            if task.is_valid():
                logger.info(f"+++ Adding training task {name} from {path}")
                trainers[name] = task
        return trainers
