"""Label-efficiency protocol: probe encoders at growing label budgets through the bundles, resumably; summarise."""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import logging
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.bundle import ConfigParser

import voco_components
from voco_components.apps.demo_covid import demo_covid_dir
from voco_components.apps.demo_cxr import demo_cxr_dir
from voco_components.data.datalists import listed_entries, read_json
from voco_components.data.folds import fold_split
from voco_components.evaluation.label_splits import (
    BUDGET_UNITS,
    budget_key,
    patient_sample_splits,
    patient_splits,
    splits_hash,
    splits_text,
    volume_splits,
)
from voco_components.evaluation.paired_stats import bootstrap_ci, holm, mean_sd, sign_flip_test
from voco_components.evaluation.probes import (
    LogisticRegressionProbe,
    MultiLabelLogisticProbe,
    accuracy,
    balanced_accuracy,
    knn_multilabel_scores,
    knn_predict,
)
from voco_components.metrics.multilabel import auc_summary
from voco_components.networks.encoders import pool_and_concat
from voco_components.networks.pretrained_registry import check_architecture, fetch_pretrained, find_pretrained
from voco_components.networks.weights import load_pretrained
from voco_components.utils import atomic_save, atomic_save_text

__all__ = [
    "read_settings",
    "TASKS",
    "PROBES",
    "RESULT_COLUMNS",
    "Protocol",
    "load_protocol",
    "make_splits",
    "run_protocol",
    "summarize",
    "read_results",
    "summary_table",
    "table_markdown",
    "draw_curve",
    "plot_curve",
    "save_figure",
    "pyplot",
    "main",
]

logger = logging.getLogger(__name__)

TASKS = {"voco_btcv_seg": "segmentation", "voco_covid_cls": "classification", "voco_cxr14_cls": "multilabel"}
"""The bundles a protocol can name, and their task."""
BUDGET_UNITS_OF = {
    "segmentation": ("volumes",),
    "classification": ("patients_per_class", "fraction"),
    "multilabel": ("patients", "fraction"),
}
"""The budget units each task takes (of :data:`BUDGET_UNITS`)."""
PROBES = ("knn", "linear", "frozen", "full")
"""knn and linear on frozen pooled features (classification and multi-label, in process); linear
(segmentation), frozen and full train through the bundle with ``configs/label_efficiency/<probe>.json``."""
TRAINED_PROBES = ("linear", "frozen", "full")
RESULT_COLUMNS = ("task", "init", "probe", "budget", "split_seed", "train_seed", "case", "class", "metric", "value")
PRIMARY_METRIC = {"segmentation": "mean_dice", "classification": "balanced_accuracy", "multilabel": "mean_auc"}
SCRATCH = "scratch"
DEMO_SETS = {"demo_covid": demo_covid_dir, "demo_cxr": demo_cxr_dir}
"""``dataset_dir`` values that generate a demo set in ``<out>/demo_data``: the synthetic CC-CCII-style CTs, and
the ChestX-ray14-style radiographs (:mod:`voco_components.apps.demo_cxr`)."""


@dataclass
class Protocol:
    """A label-efficiency protocol file (JSON); see :func:`load_protocol` for the keys.

    Relative paths are taken from the current folder (run from the repository root).
    """

    source: str
    bundle: str
    inits: dict[str, str | None]
    probes: list[str]
    budgets: list[float]
    budget_unit: str
    split_seeds: list[int]
    train_seeds: list[int]
    steps: dict[str, int]
    dataset_dir: str
    datalist: str | None = None
    fold: int | None = None
    configs: list[str] = field(default_factory=lambda: ["train.json"])
    overrides: dict[str, Any] = field(default_factory=dict)
    stratify: bool = True
    knn_k: int = 5
    linear_weight_decay: float = 1e-2
    make_missing: dict[str, list[str]] = field(default_factory=dict)

    @property
    def task(self) -> str:
        return TASKS[self.bundle]

    @property
    def bundle_root(self) -> Path:
        return Path("bundles") / self.bundle

    def on_features(self, probe: str) -> bool:
        """Whether ``probe`` runs in process on cached pooled features (knn and linear, but for segmentation)."""
        return self.task != "segmentation" and probe in ("knn", "linear")


def _fail(source: str, problem: str) -> ValueError:
    return ValueError(f"{source}: {problem}")


def read_settings(path: str | Path, what: str, noun: str, settings_type: type, required: Sequence[str]) -> dict:
    """The JSON object of a settings file (a protocol, a comparison) whose keys are the fields of the dataclass
    ``settings_type`` but ``source``; a ValueError naming the file for anything else or a missing ``required`` key.
    """
    source = str(path)
    raw = read_json(path, what)
    if not isinstance(raw, dict):
        raise _fail(source, f"a {noun} is a JSON object.")
    known = set(settings_type.__dataclass_fields__) - {"source"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise _fail(source, f"unknown keys {unknown}; known keys are {sorted(known)}.")
    missing = sorted(set(required) - set(raw))
    if missing:
        raise _fail(source, f"missing keys {missing}.")
    return raw


def load_protocol(path: str | Path, init_paths: dict[str, str] | None = None) -> Protocol:
    """Read and check a protocol file.

    Keys: ``bundle`` (``voco_btcv_seg``, ``voco_covid_cls`` or ``voco_cxr14_cls``), ``dataset_dir`` (or
    ``"demo_covid"``, ``"demo_cxr"``), ``datalist`` (default ``<dataset_dir>/datalist.json``), ``fold``
    (classification: the k-fold datalist's held-out fold is the fixed test set, the other folds are the pool;
    null: the ``training`` list is the pool and ``validation`` the test set, as for segmentation; multi-label:
    the ``training`` and ``validation`` lists are the pool and ``testing``, the official test list, is the
    test set), ``configs`` (the bundle configs under
    ``configs/``, merged in order), ``overrides`` (bundle ids for every run, ``weights_cache`` among them),
    ``inits`` (name -> encoder checkpoint or the name of a published encoder such as ``voco_b``, ``scratch`` ->
    null), ``probes``, ``budgets`` with ``budget_unit`` (:data:`BUDGET_UNITS_OF` the task: ``volumes``;
    ``patients_per_class`` or ``fraction``; ``patients`` or ``fraction``), ``stratify`` (single-label
    classification), ``split_seeds``, ``train_seeds``, ``steps``
    (probe -> training steps, for the trained probes), ``knn_k``, ``linear_weight_decay`` and
    ``make_missing`` (init -> a command, an argument list whose ``python`` means this interpreter, that
    writes its checkpoint when it is missing).
    ``init_paths`` replace checkpoints of the file (``--init name=path``, or ``--init name=voco_b``).
    """
    source = str(path)
    required = ("bundle", "inits", "probes", "budgets", "budget_unit", "split_seeds")
    raw = read_settings(path, "label-efficiency protocol", "protocol", Protocol, required)
    settings = {"train_seeds": [0], "steps": {}, "dataset_dir": "", **raw}
    inits = {**settings["inits"], **(init_paths or {})}
    protocol = Protocol(source=source, **{**settings, "inits": inits})
    _check(protocol)
    return protocol


def _check(p: Protocol) -> None:
    """Raise a ValueError naming the protocol file for every inconsistent setting."""
    if p.bundle not in TASKS:
        raise _fail(p.source, f"bundle must be one of {sorted(TASKS)}, got {p.bundle!r}.")
    if p.inits.get(SCRATCH, "missing") is not None:
        raise _fail(p.source, f"inits needs '{SCRATCH}': null, the from-scratch baseline of the paired tests.")
    bad = [probe for probe in p.probes if probe not in PROBES]
    if bad or not p.probes:
        raise _fail(p.source, f"probes must be a non-empty subset of {PROBES}, got {p.probes}.")
    if p.task == "segmentation" and "knn" in p.probes:
        raise _fail(p.source, "the knn probe classifies volumes; segmentation probes are linear, frozen and full.")
    units = BUDGET_UNITS_OF[p.task]
    if p.budget_unit not in units:
        raise _fail(p.source, f"budget_unit for {p.task} must be one of {units} (of {BUDGET_UNITS}).")
    if not p.budgets or list(p.budgets) != sorted(set(p.budgets)):
        raise _fail(p.source, f"budgets must be increasing and distinct, got {p.budgets}.")
    if not p.split_seeds or not p.train_seeds:
        raise _fail(p.source, "split_seeds and train_seeds need at least one seed each.")
    trained = [probe for probe in p.probes if not p.on_features(probe)]
    no_steps = [probe for probe in trained if int(p.steps.get(probe, 0)) < 1]
    if no_steps:
        raise _fail(p.source, f"steps needs a positive number of training steps for {no_steps}.")
    if not p.dataset_dir:
        raise _fail(p.source, f"dataset_dir is required (a folder, or one of the demo sets {sorted(DEMO_SETS)}).")


# ---------------------------------------------------------------- data and splits


def resolve_dataset(p: Protocol, out: Path) -> tuple[Path, Path]:
    """(dataset_dir, datalist) as absolute paths; a demo set (:data:`DEMO_SETS`) is written into ``<out>/demo_data``."""
    make_demo = DEMO_SETS.get(p.dataset_dir)
    dataset_dir = Path(make_demo(out / "demo_data")) if make_demo else Path(p.dataset_dir)
    datalist = Path(p.datalist) if p.datalist else dataset_dir / "datalist.json"
    return dataset_dir.resolve(), datalist.resolve()


def pool_and_test(p: Protocol, datalist: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The labelled pool and the fixed test set, entries with their image and label paths as written (relative to
    ``dataset_dir``), so that ``splits.json`` and its hash do not depend on where the data lie."""
    if p.task == "classification" and p.fold is not None:
        return fold_split(datalist, p.fold)
    if p.task == "multilabel":
        pool = [*listed_entries(datalist, "training"), *listed_entries(datalist, "validation")]
        return pool, listed_entries(datalist, "testing")
    return listed_entries(datalist, "training"), listed_entries(datalist, "validation")


def make_splits(p: Protocol, pool: list[dict[str, Any]], test: list[dict[str, Any]]) -> dict[str, Any]:
    """The content of ``splits.json``: per split seed, per budget, the labelled images; the test images; a hash."""
    splits: dict[str, Any] = {}
    for seed in p.split_seeds:
        if p.task == "segmentation":
            budgets, redraws = volume_splits([e["image"] for e in pool], p.budgets, seed), 0
        elif p.task == "multilabel":
            budgets, redraws = patient_sample_splits(pool, p.budgets, p.budget_unit, seed), 0
        else:
            budgets, redraws = patient_splits(pool, p.budgets, p.budget_unit, seed, p.stratify)
        splits[str(seed)] = {"budgets": budgets, "redraws": redraws}
    content = {
        "datalist": p.datalist or f"{p.dataset_dir}/datalist.json",
        "fold": p.fold,
        "budget_unit": p.budget_unit,
        "stratify": p.stratify if p.task == "classification" else None,
        "pool": [e["image"] for e in pool],
        "test": [e["image"] for e in test],
        "splits": splits,
    }
    return {**content, "sha256": splits_hash(content)}


def write_splits(out: Path, content: dict[str, Any]) -> None:
    """Write ``<out>/splits.json``; an existing one must hold the same splits (else it is another protocol's)."""
    path = out / "splits.json"
    if path.is_file():
        existing = read_json(path, "splits")
        if existing.get("sha256") != content["sha256"]:
            raise ValueError(
                f"{path}: holds other splits (sha256 {existing.get('sha256')}, this protocol gives "
                f"{content['sha256']}); use a new --out folder for a changed protocol."
            )
        return
    atomic_save_text(splits_text(content), path)


# ---------------------------------------------------------------- inits


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def resolve_inits(p: Protocol) -> dict[str, dict[str, Any]]:
    """Init name -> ``{"path", "sha256", "pretrained"}`` (None for scratch), running ``make_missing`` for an absent
    checkpoint.

    ``pretrained`` is what the bundle and the feature extraction load: the absolute path of a checkpoint, or the
    name of a published encoder, which is checked against the bundle's network settings and downloaded here
    into the protocol's ``weights_cache`` (its ``path`` is the cached file).
    """
    resolved: dict[str, dict[str, Any]] = {}
    for name, path in p.inits.items():
        if path is None:
            resolved[name] = {"path": None, "sha256": None, "pretrained": None}
            continue
        entry = find_pretrained(path)
        if entry is not None:
            config = _parser(p, _bundle_configs(p), p.overrides)
            settings = {key: config.get_parsed_content(key) for key in ("feature_size", "use_v2", "window_size")}
            try:
                check_architecture(entry, **settings)
            except ValueError as error:
                raise _fail(p.source, f"init {name!r}: {error}") from error
            cached = fetch_pretrained(entry, config.get_parsed_content("weights_cache"))
            resolved[name] = {"path": str(cached), "sha256": file_sha256(cached), "pretrained": entry.name}
            continue
        checkpoint = Path(path)
        if not checkpoint.is_file() and name in p.make_missing:
            command = list(p.make_missing[name])
            command[0] = sys.executable if command[0] == "python" else command[0]
            logger.info(f"{checkpoint} is missing: running {command}")
            subprocess.run(command, check=True)
        if not checkpoint.is_file():
            raise FileNotFoundError(f"{p.source}: init {name!r}: checkpoint {checkpoint} not found.")
        absolute = str(checkpoint.resolve())
        resolved[name] = {"path": absolute, "sha256": file_sha256(checkpoint), "pretrained": absolute}
    return resolved


# ---------------------------------------------------------------- runs


@dataclass(frozen=True)
class Run:
    """One cell of the protocol."""

    init: str
    probe: str
    budget: str
    split_seed: int
    train_seed: int

    def folder(self, out: Path) -> Path:
        return (
            out
            / "runs"
            / self.init
            / self.probe
            / f"budget_{self.budget}"
            / f"split{self.split_seed}_train{self.train_seed}"
        )


def distinct_split_seeds(splits: dict[str, Any], budget: str) -> list[int]:
    """The split seeds whose labelled images at ``budget`` differ from every earlier seed's: a budget that takes the
    whole pool (or any set two seeds share) is run once, not repeated as if each copy were a new sample, which would
    let identical differences pass the paired test."""
    seen: list[list[str]] = []
    seeds = []
    for seed, split in splits["splits"].items():
        images = sorted(split["budgets"][budget])
        if images not in seen:
            seen.append(images)
            seeds.append(int(seed))
    return seeds


def protocol_runs(p: Protocol, splits: dict[str, Any]) -> list[Run]:
    """Every (init, probe, budget, split seed, train seed), in that nesting order, with the split seeds of each
    budget that give distinct labelled sets (:func:`distinct_split_seeds`)."""
    seeds = {budget_key(b): distinct_split_seeds(splits, budget_key(b)) for b in p.budgets}
    return [
        Run(init, probe, budget, s, t)
        for init in p.inits
        for probe in p.probes
        for budget in seeds
        for s in seeds[budget]
        for t in p.train_seeds
    ]


def _parser(p: Protocol, files: Sequence[Path], overrides: dict[str, Any]) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config([str(f) for f in files])
    parser.update(overrides)
    return parser


def _bundle_configs(p: Protocol) -> list[Path]:
    return [p.bundle_root / "configs" / name for name in p.configs]


class FeatureCache:
    """Pooled frozen-encoder features of every pool and test volume, per init, cached in ``<out>/features``.

    A pretrained init is extracted once; ``scratch`` once per train seed (its random weights depend on the
    seed). Each file holds ``{"images", "labels" ((N,) classes, or (N, K) 0/1 targets for multi-label data),
    "features" (N, C), "sha256", "num_classes", "class_names"}`` and is reused only when the checkpoint's SHA-256
    matches.
    """

    def __init__(self, p: Protocol, out: Path, dataset_dir: Path, entries: list[dict[str, Any]], inits: dict) -> None:
        self.p, self.folder, self.dataset_dir = p, out / "features", dataset_dir
        self.entries, self.inits = entries, inits
        self.loaded: dict[str, dict[str, Any]] = {}
        self.batch_size = 8

    def key(self, init: str, train_seed: int) -> str:
        return f"{init}_seed{train_seed}" if self.inits[init]["path"] is None else init

    def _valid(self, path: Path, sha256: str | None) -> dict[str, Any] | None:
        if not path.is_file():
            return None
        cached = torch.load(path, map_location="cpu", weights_only=True)
        return cached if cached.get("sha256") == sha256 else None

    def _network(self, init: str, train_seed: int, parser: ConfigParser) -> torch.nn.Module:
        """The bundle's network with the init's encoder; ``weights_cache`` only in the bundles that take published
        encoders by name (the 2D classifier has none to take)."""
        torch.manual_seed(train_seed)
        network = parser.get_parsed_content("network_def", instantiate=True, lazy=False)
        load_pretrained(
            network,
            self.inits[init]["pretrained"],
            min_encoder_fraction=parser["pretrained_min_fraction"],
            weights_cache=parser.get_parsed_content("weights_cache") if "weights_cache" in parser else None,
        )
        return network.eval()

    def prepare(self, wanted: list[tuple[str, int]]) -> None:
        """Extract the features of every (init, train seed) in ``wanted`` not cached yet.

        Each volume is read and preprocessed once (the bundle's ``validate#preprocessing``), all of them are
        held as one (N, 1, *spatial_size) tensor, and every encoder runs over it in batches of 8.
        """
        todo = {}
        for init, seed in wanted:
            key = self.key(init, seed)
            cached = self._valid(self.folder / f"{key}.pt", self.inits[init]["sha256"])
            if cached is not None:
                self.loaded[key] = cached
            elif key not in todo:
                todo[key] = (init, seed)
        if not todo:
            return
        parser = _parser(self.p, _bundle_configs(self.p), {**self.p.overrides, "dataset_dir": str(self.dataset_dir)})
        preprocessing = parser.get_parsed_content("validate#preprocessing")
        images = torch.stack(
            [
                torch.as_tensor(preprocessing({"image": str(self.dataset_dir / e["image"])})["image"]).float()
                for e in self.entries
            ]
        )
        for key, (init, seed) in todo.items():
            network = self._network(init, seed, parser)
            with torch.no_grad():
                features = torch.cat(
                    [pool_and_concat(network.feature_maps(batch)) for batch in images.split(self.batch_size)]
                )
            record = {
                "images": [e["image"] for e in self.entries],
                "labels": torch.tensor([e["label"] for e in self.entries]),
                "features": features,
                "sha256": self.inits[init]["sha256"],
                "num_classes": int(parser.get_parsed_content("num_classes")),
                "class_names": list(parser.get_parsed_content("class_names")),
            }
            atomic_save(record, self.folder / f"{key}.pt")
            self.loaded[key] = record

    def get(self, init: str, train_seed: int, images: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C) features and the labels of ``images`` ((N,) or (N, K)), in that order."""
        record = self.loaded[self.key(init, train_seed)]
        index = {image: i for i, image in enumerate(record["images"])}
        rows = torch.tensor([index[image] for image in images])
        return record["features"][rows], record["labels"][rows]


def _row(p: Protocol, run: Run, case: str, cls: str, metric: str, value: float) -> dict[str, Any]:
    return {
        "task": p.task,
        "init": run.init,
        "probe": run.probe,
        "budget": run.budget,
        "split_seed": run.split_seed,
        "train_seed": run.train_seed,
        "case": case,
        "class": cls,
        "metric": metric,
        "value": float(value),
    }


def _classification_rows(
    p: Protocol, run: Run, images: Sequence[str], predictions: torch.Tensor, labels: torch.Tensor
) -> list[dict[str, Any]]:
    """Per test case ``correct`` (0/1), and over the test set ``accuracy`` and ``balanced_accuracy``."""
    rows = [
        _row(p, run, Path(image).name, "all", "correct", float(pred == label))
        for image, pred, label in zip(images, predictions.tolist(), labels.tolist(), strict=True)
    ]
    rows.append(_row(p, run, "all", "all", "accuracy", accuracy(predictions, labels)))
    rows.append(_row(p, run, "all", "all", "balanced_accuracy", balanced_accuracy(predictions, labels)))
    return rows


def _multilabel_rows(
    p: Protocol, run: Run, scores: np.ndarray, targets: np.ndarray, class_names: Sequence[str]
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Per class ``auc`` and over the classes ``mean_auc`` (:func:`~voco_components.metrics.multilabel.auc_summary`),
    and the classes the test set cannot score (no positive or no negative image) with the reason, left out of
    both."""
    summary = auc_summary(scores, targets, class_names)
    rows = [
        _row(p, run, "all", name, "auc", value)
        for name, value in zip(class_names, summary["auc"], strict=True)
        if np.isfinite(value)
    ]
    rows.append(_row(p, run, "all", "all", "mean_auc", summary["mean_auc"]))
    return rows, summary["absent"]


def run_feature_probe(
    p: Protocol, run: Run, cache: FeatureCache, train_images: list[str], test_images: list[str]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """knn or logistic regression on cached pooled features; returns the rows and the probe's settings."""
    x_train, y_train = cache.get(run.init, run.train_seed, train_images)
    x_test, y_test = cache.get(run.init, run.train_seed, test_images)
    record = cache.loaded[cache.key(run.init, run.train_seed)]
    num_classes = int(record["num_classes"])
    if p.task == "multilabel":
        if run.probe == "knn":
            scores = knn_multilabel_scores(x_train, y_train, x_test, k=p.knn_k)
            settings = {"probe": "knn", "k": p.knn_k, "similarity": "cosine", "score": "share of neighbours"}
        else:
            model = MultiLabelLogisticProbe(num_classes, weight_decay=p.linear_weight_decay).fit(x_train, y_train)
            scores = model.predict_proba(x_test)
            settings = {"probe": "logistic_regression_per_class", "weight_decay": p.linear_weight_decay}
        rows, absent = _multilabel_rows(p, run, scores.numpy(), y_test.numpy(), record["class_names"])
        settings.update(absent=absent)
    elif run.probe == "knn":
        predictions = knn_predict(x_train, y_train, x_test, num_classes, k=p.knn_k)
        rows = _classification_rows(p, run, test_images, predictions, y_test)
        settings = {"probe": "knn", "k": p.knn_k, "similarity": "cosine"}
    else:
        model = LogisticRegressionProbe(num_classes, weight_decay=p.linear_weight_decay).fit(x_train, y_train)
        rows = _classification_rows(p, run, test_images, model.predict(x_test), y_test)
        settings = {"probe": "logistic_regression", "weight_decay": p.linear_weight_decay}
    settings.update(cache_key=cache.key(run.init, run.train_seed), feature_size=int(x_train.shape[1]))
    settings.update(config_files=[str(f) for f in _bundle_configs(p)], overrides=p.overrides)
    return rows, settings


def _absolute(entries: list[dict[str, Any]], dataset_dir: Path) -> list[dict[str, Any]]:
    return [
        {k: str(dataset_dir / v) if k in ("image", "label") and isinstance(v, str) else v for k, v in e.items()}
        for e in entries
    ]


def _bundle_call(files: Sequence[Path], log: Path, workflow: str | None) -> None:
    """``python -m monai.bundle run [workflow] --config_file [...]``; its output goes to ``log``."""
    configs = Path(files[0]).parent
    command = [sys.executable, "-m", "monai.bundle", "run", *([workflow] if workflow else [])]
    command += ["--config_file", json.dumps([str(f) for f in files])]
    command += ["--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf")]
    with open(log, "w") as handle:
        result = subprocess.run(command, stdout=handle, stderr=subprocess.STDOUT)
    if result.returncode:
        raise RuntimeError(f"{' '.join(command)} failed (exit {result.returncode}); see {log}.")


def run_bundle_probe(
    p: Protocol,
    run: Run,
    folder: Path,
    dataset_dir: Path,
    pretrained: str | None,
    train: list[dict[str, Any]],
    test: list[dict[str, Any]],
    cache_dir: Path,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Train with ``configs/label_efficiency/<probe>.json`` for ``steps`` steps, then evaluate on the test set.

    The bundle validates nowhere during training (the overlays set ``val_interval`` past the last epoch and
    ``validate_last_epoch`` false), so the test set is seen once, by the final model; the preprocessed
    volumes are shared through ``cache_dir``.
    """
    datalist = folder / "datalist.json"
    atomic_save_text(
        json.dumps({"training": _absolute(train, dataset_dir), "validation": _absolute(test, dataset_dir)}, indent=2),
        datalist,
    )
    steps = int(p.steps[run.probe])
    overrides = {
        **p.overrides,
        "bundle_root": str(p.bundle_root.resolve()),
        "output_dir": str(folder / "bundle"),
        "cache_dir": str(cache_dir),
        "export_path": str(folder / "model.pt"),
        "dataset_dir": str(dataset_dir),
        "datalist": str(datalist),
        "pretrained": pretrained,
        "seed": run.train_seed,
        "max_epochs": 1,
        "epoch_length": steps,
        "checkpoint_interval": steps,
        "eval_checkpoint": str(folder / "model.pt"),
        "eval_dir": str(folder / "eval"),
    }
    if p.task != "segmentation":
        overrides["fold"] = None
    overrides_file = folder / "overrides.json"
    atomic_save_text(json.dumps(overrides, indent=2), overrides_file)
    overlays = p.bundle_root.resolve() / "configs" / "label_efficiency"
    base = [f.resolve() for f in _bundle_configs(p)] + [overlays / f"{run.probe}.json"]
    train_files = [*base, overrides_file]
    evaluate = [p.bundle_root.resolve() / "configs" / "evaluate.json"]
    evaluate += [overlays / "evaluate.json"] if (overlays / "evaluate.json").is_file() else []
    _bundle_call(train_files, folder / "train.log", "training")
    _bundle_call([*base, *evaluate, overrides_file], folder / "evaluate.log", None)
    parser = _parser(p, train_files[:-1], overrides)
    settings = {"config": parser.get(), "config_files": [str(f) for f in train_files], "steps": steps}
    if p.task == "segmentation":
        return _segmentation_rows(p, run, folder / "eval", parser, test), settings
    if p.task == "multilabel":
        rows, absent = _bundle_multilabel_rows(p, run, folder / "eval")
        return rows, {**settings, "absent": absent}
    return _bundle_classification_rows(p, run, folder / "eval"), settings


def _bundle_classification_rows(p: Protocol, run: Run, eval_dir: Path) -> list[dict[str, Any]]:
    record = read_json(eval_dir / "predictions.json", "predictions")
    names = record["class_names"]
    volumes = record["volumes"]
    predictions = torch.tensor([names.index(v["prediction"]) for v in volumes])
    labels = torch.tensor([names.index(v["label"]) for v in volumes])
    return _classification_rows(p, run, [v["image"] for v in volumes], predictions, labels)


def _bundle_multilabel_rows(p: Protocol, run: Run, eval_dir: Path) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The rows of :func:`_multilabel_rows` from the bundle's ``predictions.json`` (``MultiLabelReport``)."""
    record = read_json(eval_dir / "predictions.json", "predictions")
    names, images = record["class_names"], record["images"]
    scores = np.array([[image["probabilities"][n] for n in names] for image in images])
    targets = np.array([[image["labels"][n] for n in names] for image in images])
    return _multilabel_rows(p, run, scores, targets, names)


def _segmentation_rows(
    p: Protocol, run: Run, eval_dir: Path, parser: ConfigParser, test: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Per case and organ ``dice``, per case ``mean_dice`` over its organs, and their means over the cases.

    Reads MONAI's ``MetricsSaver`` table ``val_mean_dice_raw.csv`` (comma-separated: case, class0 ..., mean;
    one line per test volume in ``test`` order, as the evaluator does not shuffle). An organ absent from a
    case's label map (Dice NaN) is left out of that case's mean.
    """
    names = parser.get_parsed_content("class_names")
    if not parser.get_parsed_content("dice_include_background"):
        names = names[1:]
    path = eval_dir / "val_mean_dice_raw.csv"
    with open(path) as handle:
        table = list(csv.reader(handle, delimiter=","))[1:]
    if len(table) != len(test) or any(len(line) != len(names) + 2 for line in table):
        raise ValueError(f"{path}: expected {len(test)} cases of {len(names)} classes, got {len(table)} lines.")
    rows, per_case = [], []
    for entry, line in zip(test, table, strict=True):
        case, values = Path(entry["image"]).name, np.array([float(v) for v in line[1 : 1 + len(names)]])
        rows += [_row(p, run, case, name, "dice", v) for name, v in zip(names, values, strict=True) if np.isfinite(v)]
        mean = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        rows.append(_row(p, run, case, "all", "mean_dice", mean))
        per_case.append(mean)
    rows.append(_row(p, run, "all", "all", "mean_dice", float(np.nanmean(per_case))))
    return rows


def _run_one(
    p: Protocol,
    run: Run,
    out: Path,
    splits: dict[str, Any],
    inits: dict[str, dict[str, Any]],
    pool: list[dict[str, Any]],
    test: list[dict[str, Any]],
    dataset_dir: Path,
    cache: FeatureCache,
) -> None:
    """Do ``run`` unless its ``result.json`` exists; a folder without one (a killed run) is cleared first."""
    folder = run.folder(out)
    if (folder / "result.json").is_file():
        return
    if folder.exists():
        logger.info(f"{folder}: unfinished earlier attempt, starting it again")
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    start = time.perf_counter()
    train_images = splits["splits"][str(run.split_seed)]["budgets"][run.budget]
    if p.on_features(run.probe):
        rows, settings = run_feature_probe(p, run, cache, train_images, splits["test"])
    else:
        chosen = set(train_images)
        train = [e for e in pool if e["image"] in chosen]
        rows, settings = run_bundle_probe(
            p, run, folder, dataset_dir, inits[run.init]["pretrained"], train, test, out / "cache"
        )
    result = {
        "run": run.__dict__,
        "version": voco_components.__version__,
        "init": inits[run.init],
        "train_images": train_images,
        "splits_sha256": splits["sha256"],
        "seconds": time.perf_counter() - start,
        "settings": settings,
        "rows": rows,
    }
    atomic_save_text(json.dumps(result, indent=2) + "\n", folder / "result.json")
    logger.info(f"{folder}: done in {result['seconds']:.1f} s")


def write_results(out: Path, runs: Sequence[Run]) -> Path:
    """Collect every run's rows into ``<out>/results.csv`` (long form, :data:`RESULT_COLUMNS`)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for run in runs:
        for row in read_json(run.folder(out) / "result.json", "run result")["rows"]:
            writer.writerow({**row, "value": repr(row["value"])})
    path = out / "results.csv"
    atomic_save_text(buffer.getvalue(), path)
    return path


def run_protocol(protocol: str | Path, out: str | Path, init_paths: dict[str, str] | None = None) -> Path:
    """Run every cell of ``protocol`` not finished yet in ``out``, then write ``results.csv``; returns its path.

    Writes ``<out>/protocol.json`` (the protocol as run, with the init checkpoints' SHA-256 and the
    project version), ``<out>/splits.json``, ``<out>/runs/<init>/<probe>/budget_<b>/split<s>_train<t>/``
    (``result.json`` last, atomically: its presence marks the run done) and ``<out>/features/``.
    """
    p = load_protocol(protocol, init_paths)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    dataset_dir, datalist = resolve_dataset(p, out)
    pool, test = pool_and_test(p, datalist)
    splits = make_splits(p, pool, test)
    write_splits(out, splits)
    inits = resolve_inits(p)
    record = {**{k: v for k, v in p.__dict__.items()}, "task": p.task, "inits_resolved": inits}
    record["version"] = voco_components.__version__
    atomic_save_text(json.dumps(record, indent=2) + "\n", out / "protocol.json")
    runs = protocol_runs(p, splits)
    cache = FeatureCache(p, out, dataset_dir, [*pool, *test], inits)
    feature_runs = [r for r in runs if p.on_features(r.probe) and not (r.folder(out) / "result.json").is_file()]
    cache.prepare(sorted({(r.init, r.train_seed) for r in feature_runs}))
    for run in runs:
        _run_one(p, run, out, splits, inits, pool, test, dataset_dir, cache)
    path = write_results(out, runs)
    logger.info(f"{len(runs)} runs in {out}; this call took {time.perf_counter() - start:.1f} s; wrote {path}")
    return path


# ---------------------------------------------------------------- summary


def read_results(path: Path) -> list[dict[str, Any]]:
    """The rows of a ``results.csv`` (:data:`RESULT_COLUMNS`)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no results; run `python -m voco_components.apps.label_efficiency run` first.")
    with open(path) as handle:
        rows = list(csv.DictReader(handle))
    if rows and set(rows[0]) != set(RESULT_COLUMNS):
        raise ValueError(f"{path}: columns {sorted(rows[0])}, expected {list(RESULT_COLUMNS)}.")
    return rows


def summary_table(
    rows: list[dict[str, Any]], num_resamples: int = 10000, seed: int = 0, baseline: str = SCRATCH
) -> list[dict[str, Any]]:
    """Per metric, init, probe and budget (run-level rows, case and class ``all``): the statistics over seeds.

    Each entry: ``n``, ``mean``, ``sd``, ``ci_low``/``ci_high`` (:func:`bootstrap_ci`), and for an init other
    than ``baseline`` (``scratch`` by default) the paired difference from ``baseline`` (same probe, budget, split
    seed and train seed): ``n_pairs``, ``diff``, ``p`` (:func:`sign_flip_test`) and ``p_holm`` (:func:`holm` across
    the budgets of that metric, init and probe).
    """
    cells: dict[tuple, dict[tuple[int, int], float]] = {}
    for row in rows:
        if row["case"] == "all" and row["class"] == "all":
            key = (row["metric"], row["init"], row["probe"], row["budget"])
            cells.setdefault(key, {})[(int(row["split_seed"]), int(row["train_seed"]))] = float(row["value"])
    table = []
    for (metric, init, probe, budget), values in sorted(cells.items(), key=lambda kv: (*kv[0][:3], float(kv[0][3]))):
        mean, sd = mean_sd(list(values.values()))
        low, high = bootstrap_ci(list(values.values()), num_resamples=num_resamples, seed=seed)
        entry = {"metric": metric, "init": init, "probe": probe, "budget": budget, "n": len(values)}
        entry.update(mean=mean, sd=sd, ci_low=low, ci_high=high, n_pairs=0, diff=float("nan"), p=float("nan"))
        reference = cells.get((metric, baseline, probe, budget))
        if init != baseline and reference:
            pairs = sorted(set(values) & set(reference))
            differences = [values[k] - reference[k] for k in pairs]
            if differences:
                entry.update(n_pairs=len(pairs), diff=float(np.mean(differences)), p=sign_flip_test(differences))
        table.append(entry)
    families: dict[tuple, list[dict[str, Any]]] = {}
    for entry in table:
        families.setdefault((entry["metric"], entry["init"], entry["probe"]), []).append(entry)
    for family in families.values():
        for entry, adjusted in zip(family, holm([e["p"] for e in family]), strict=True):
            entry["p_holm"] = adjusted
    return table


def _number(value: float, digits: int = 3) -> str:
    return "–" if not np.isfinite(value) else f"{value:.{digits}f}"


def table_markdown(table: list[dict[str, Any]]) -> str:
    """A Markdown table per metric: mean ± SD, 95 % CI, paired difference from scratch, p and Holm-adjusted p."""
    lines = []
    for metric in dict.fromkeys(e["metric"] for e in table):
        lines += [
            f"### {metric}",
            "",
            "| init | probe | budget | n | mean ± SD | 95 % CI | Δ vs scratch (pairs) | p | p (Holm) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for e in (e for e in table if e["metric"] == metric):
            diff = f"{e['diff']:+.3f} ({e['n_pairs']})" if e["n_pairs"] else "–"
            lines.append(
                f"| {e['init']} | {e['probe']} | {e['budget']} | {e['n']} | {_number(e['mean'])} ± {_number(e['sd'])} "
                f"| [{_number(e['ci_low'])}, {_number(e['ci_high'])}] | {diff} | {_number(e['p'])} "
                f"| {_number(e['p_holm'])} |"
            )
        lines.append("")
    lines.append(
        "n: seeds (split × train); CI: percentile bootstrap of the mean (10,000 resamples, seed 0); Δ: mean paired "
        "difference from scratch (same probe, budget, split and train seed); p: exact two-sided sign-flip "
        "permutation test, Holm-corrected across budgets."
    )
    return "\n".join(lines) + "\n"


def pyplot() -> Any:
    """``matplotlib.pyplot`` on the Agg backend; an ImportError says how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "summarize draws curve.png with matplotlib, a development extra: pip install -e '.[dev]' (or matplotlib)."
        ) from exc
    return plt


def draw_curve(axes: Any, table: list[dict[str, Any]], metric: str, unit: str = "labelled volumes") -> None:
    """``metric`` against budget on ``axes``, one line per init and probe with its 95 % CI band."""
    for init, probe in dict.fromkeys((e["init"], e["probe"]) for e in table if e["metric"] == metric):
        cells = [e for e in table if (e["metric"], e["init"], e["probe"]) == (metric, init, probe)]
        x = [float(e["budget"]) for e in cells]
        axes.plot(x, [e["mean"] for e in cells], marker="o", label=f"{init} / {probe}")
        axes.fill_between(x, [e["ci_low"] for e in cells], [e["ci_high"] for e in cells], alpha=0.2)
    budgets = sorted({float(e["budget"]) for e in table})
    if len(budgets) > 1:
        axes.set_xscale("log")
    axes.set_xticks(budgets, [f"{b:g}" for b in budgets])
    axes.minorticks_off()
    axes.set_xlabel(f"label budget ({unit})")
    axes.set_ylabel(metric)
    axes.legend(fontsize=8)
    axes.grid(alpha=0.3)


def save_figure(figure: Any, path: Path) -> None:
    """Save a matplotlib figure to ``path`` atomically (a temporary file, then a rename) and close it."""
    plt = pyplot()
    figure.tight_layout()
    figure.savefig(path.with_suffix(".tmp.png"), dpi=100)
    plt.close(figure)
    path.with_suffix(".tmp.png").replace(path)


def plot_curve(table: list[dict[str, Any]], metric: str, path: Path, unit: str = "labelled volumes") -> None:
    """``metric`` against budget, one line per init and probe with its 95 % CI band, saved to ``path``."""
    figure, axes = pyplot().subplots(figsize=(6, 4))
    draw_curve(axes, table, metric, unit)
    save_figure(figure, path)


def summarize(out: str | Path) -> Path:
    """Write ``<out>/table.md`` and ``<out>/curve.png`` from ``<out>/results.csv``; returns the table's path."""
    out = Path(out)
    rows = read_results(out / "results.csv")
    table = summary_table(rows)
    if not table:
        raise ValueError(f"{out / 'results.csv'}: no run-level rows (case and class 'all').")
    protocol = read_json(out / "protocol.json", "protocol record") if (out / "protocol.json").is_file() else {}
    metric = PRIMARY_METRIC.get(protocol.get("task", ""), table[0]["metric"])
    path = out / "table.md"
    atomic_save_text(table_markdown(table), path)
    plot_curve(table, metric, out / "curve.png", protocol.get("budget_unit", "labelled volumes").replace("_", " "))
    return path


# ---------------------------------------------------------------- command line


def _init_path(text: str) -> tuple[str, str]:
    name, sep, path = text.partition("=")
    if not sep or not name or not path:
        raise argparse.ArgumentTypeError(f"--init takes NAME=PATH or NAME=<published encoder>, got {text!r}.")
    return name, path


def main(argv: Sequence[str] | None = None) -> None:
    """``run --config <protocol.json> --out <dir> [--init name=path ...]`` or ``summarize <dir>``."""
    parser = argparse.ArgumentParser(prog="python -m voco_components.apps.label_efficiency", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the protocol's unfinished cells and write results.csv")
    run.add_argument("--config", required=True, help="protocol JSON file")
    run.add_argument("--out", required=True, help="output folder (resumable)")
    run.add_argument(
        "--init",
        action="append",
        type=_init_path,
        default=[],
        help="NAME=PATH or NAME=voco_b (a published encoder): replace a checkpoint",
    )
    summary = commands.add_parser("summarize", help="write table.md and curve.png from results.csv")
    summary.add_argument("out", help="output folder of a run")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    if args.command == "run":
        print(run_protocol(args.config, args.out, dict(args.init)))
    else:
        print(summarize(args.out))


if __name__ == "__main__":
    main()
