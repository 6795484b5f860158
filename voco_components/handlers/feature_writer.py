"""The feature writer of the pretraining inference workflow: one pooled feature vector per volume."""

from __future__ import annotations

from pathlib import Path

import torch
from ignite.engine import Engine, Events

from voco_components.data.datalists import output_name
from voco_components.utils import atomic_save

__all__ = [
    "FeatureWriter",
]


class FeatureWriter:
    """Inference handler: write each volume's crop features to ``<output_dir>/<name>_voco.pt``, named after the
    input file (:func:`voco_components.data.output_name`: ``case_01.nii.gz`` -> ``case_01_voco.pt``; with
    ``data_root_dir``, the folders below it are kept, ``site_a/ct.nii.gz`` -> ``site_a/ct_voco.pt``).

    Each file holds ``features`` (n + k, C), ``boxes`` (n + k, 3, 2) in region coordinates,
    ``labels`` (k, n) and ``source`` (the input path). Needs batch size 1 and the input path under
    ``path_key`` in the batch.
    """

    def __init__(
        self,
        output_dir: str | Path,
        path_key: str = "source_path",
        box_key: str = "voco_boxes",
        data_root_dir: str | Path = "",
    ) -> None:
        self.output_dir = Path(output_dir)
        self.data_root_dir = data_root_dir
        self.path_key = path_key
        self.box_key = box_key

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        batch = engine.state.batch
        labels = engine.state.output["label"]
        if labels.shape[0] != 1:
            raise ValueError(f"FeatureWriter needs batch size 1, got {labels.shape[0]}.")
        source = str(batch[self.path_key][0])
        name = output_name(source, self.data_root_dir)
        record = {
            "features": engine.state.output["pred"].detach().cpu(),
            "boxes": torch.as_tensor(batch[self.box_key][0]).cpu(),
            "labels": labels[0].detach().cpu(),
            "source": source,
        }
        atomic_save(record, self.output_dir / f"{name}_voco.pt")
