"""Held-out evaluation of a pretrained VoCo network: every checkpoint of a run, and its initialisation."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from ignite.engine import Engine
from torch import nn

from voco_components.evaluation.organ_probe import PROBE_COUNTS, PROBE_SCORES
from voco_components.networks.weights import normalise_state_dict
from voco_components.utils import atomic_save_text

__all__ = [
    "evaluate_checkpoints",
]


logger = logging.getLogger(__name__)


def evaluate_checkpoints(
    evaluator: Engine, network: nn.Module, checkpoints: Mapping[str, str | Path], output_path: str | Path
) -> dict[str, Any]:
    """Run ``evaluator`` once per checkpoint and write every metric to one JSON file.

    Args:
        evaluator: a ``SupervisedEvaluator`` whose network is ``network`` and whose metrics include
            ``val_position_top1``, ``val_position_mae``, ``val_position_auc``, ``val_effective_rank`` and
            ``val_chance_top1``.
        network: the :class:`VoCoNet` the evaluator runs; each checkpoint's ``network`` entry is loaded into it.
        checkpoints: metric-name prefix -> checkpoint file, e.g. ``{"": final, "init_": initial}``.
        output_path: the JSON file, e.g. ``<output_dir>/eval/metrics.json``.

    Returns:
        the written metrics: for each prefix ``p``, ``p + position_top1``, ``p + position_mae``, ``p + position_auc``,
        ``p + effective_rank``, plus ``chance_top1``, ``num_random_crops`` and the checkpoint paths;
        when the evaluator runs the organ probe (:class:`voco_components.handlers.online_probe.OnlineProbeHandler`),
        also ``p + probe_knn_accuracy``, ``p + probe_linear_accuracy``, their balanced twins and the
        probe's crop counts ``probe_num_fit_crops`` and ``probe_num_score_crops``.
    """
    results: dict[str, Any] = {}
    for prefix, path in checkpoints.items():
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: checkpoint not found; train first (or point the config at one).")
        state = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(normalise_state_dict(state))  # the student of a teacher/student pair
        evaluator.run()
        metrics = evaluator.state.metrics
        results[f"{prefix}position_top1"] = float(metrics["val_position_top1"])
        results[f"{prefix}position_mae"] = float(metrics["val_position_mae"])
        results[f"{prefix}position_auc"] = float(metrics["val_position_auc"])
        results[f"{prefix}effective_rank"] = float(metrics["val_effective_rank"])
        results["chance_top1"] = float(metrics["val_chance_top1"])
        for name in PROBE_SCORES:
            if f"val_{name}" in metrics:
                results[f"{prefix}{name}"] = float(metrics[f"val_{name}"])
        for name in PROBE_COUNTS:
            if f"val_{name}" in metrics:
                results[name] = int(metrics[f"val_{name}"])
        results[f"{prefix}checkpoint"] = str(path)
    results["num_random_crops"] = int(evaluator.state.metrics.get("val_num_random_crops", 0))
    output_path = Path(output_path)
    atomic_save_text(json.dumps(results, indent=4) + "\n", output_path)
    logger.info(f"wrote {output_path}: {results}")
    return results
