"""Held-out evaluation of a pretraining network (VoCo or a baseline method): every checkpoint of a run, and its
initialisation."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from torch import nn

from voco_components.evaluation.organ_probe import PROBE_COUNTS
from voco_components.networks.weights import normalise_state_dict
from voco_components.utils import atomic_save_text

__all__ = [
    "evaluate_checkpoints",
]


logger = logging.getLogger(__name__)

COUNTS = ("num_random_crops", *PROBE_COUNTS)
WEIGHT_INDEPENDENT = ("chance_top1", *COUNTS)
"""Evaluator metrics that do not depend on the network's weights: written once, without a prefix."""


def evaluate_checkpoints(
    evaluator: Engine, network: nn.Module, checkpoints: Mapping[str, str | Path], output_path: str | Path
) -> dict[str, Any]:
    """Run ``evaluator`` once per checkpoint and write every metric to one JSON file.

    Args:
        evaluator: a ``SupervisedEvaluator`` whose network is ``network``; its metrics are named ``val_<name>``
            (VoCo's position metrics, a baseline method's pretext metrics, the organ probe's scores).
        network: the network the evaluator runs (the method's, e.g. :class:`VoCoNet`); each checkpoint's
            ``network`` entry is loaded into it.
        checkpoints: metric-name prefix -> checkpoint file, e.g. ``{"": final, "init_": initial}``.
        output_path: the JSON file, e.g. ``<output_dir>/eval/metrics.json``.

    Returns:
        the written metrics: for each prefix ``p`` and evaluator metric ``val_<name>``, ``p + name`` (VoCo:
        ``position_top1``, ``position_mae``, ``position_auc``, ``effective_rank``; with the organ probe
        (:class:`voco_components.handlers.online_probe.OnlineProbeHandler`) ``probe_knn_accuracy``,
        ``probe_linear_accuracy`` and their balanced twins), and the checkpoint paths; the metrics that do not
        depend on the weights once, without a prefix: ``chance_top1``, ``num_random_crops`` (0 for a method
        without random crops) and the probe's crop counts ``probe_num_fit_crops`` and ``probe_num_score_crops``.
    """
    results: dict[str, Any] = {}
    for prefix, path in checkpoints.items():
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found; train first (or point the config at one).")
        state = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(normalise_state_dict(state))  # the student of a teacher/student pair
        evaluator.run()
        for key, value in evaluator.state.metrics.items():
            name = key.removeprefix("val_")
            if name in WEIGHT_INDEPENDENT:
                results[name] = int(value) if name in COUNTS else float(value)
            elif isinstance(value, (int, float)):
                results[f"{prefix}{name}"] = float(value)
        results[f"{prefix}checkpoint"] = str(path)
    results["num_random_crops"] = int(evaluator.state.metrics.get("val_num_random_crops", 0))
    output_path = Path(output_path)
    atomic_save_text(json.dumps(results, indent=4) + "\n", output_path)
    logger.info(f"wrote {output_path}: {results}")
    return results
