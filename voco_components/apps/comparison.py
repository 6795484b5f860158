"""VoCo against the baseline methods at an equal budget: pretrain every method through ``voco_pretrain`` from the same
seed on the same stream, record what each costs, then run label-efficiency protocols with every export and
``scratch`` as inits; resumable; summarised in ``table.md`` and ``curve.png``.

``python -m voco_components.apps.comparison compare --config <comparison.json> --out <dir>`` (run from the
repository root), or ``summarize <dir>`` to redraw the table and the curve.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import voco_components
from voco_components.apps import label_efficiency
from voco_components.data.datalists import read_json
from voco_components.engines.checkpoint_state import checkpoint_steps
from voco_components.engines.methods import METHODS, get_method
from voco_components.evaluation.organ_probe import PROBE_SCORES
from voco_components.utils import atomic_save_text

__all__ = [
    "CORPUS_KEYS",
    "BUDGET_KEYS",
    "Comparison",
    "load_comparison",
    "protocol_name",
    "pretrain_method",
    "run_comparison",
    "summarize",
    "main",
]

logger = logging.getLogger(__name__)

PRETRAIN_BUNDLE = Path("bundles") / "voco_pretrain"
CORPUS_KEYS = ("dataset_dir", "datalist", "val_datalist", "probe_datalist", "probe_dataset_dir")
"""The ``voco_pretrain`` ids that name the corpus (the same for every method)."""
BUDGET_KEYS = ("max_steps", "batch_size")
"""The budget: optimiser steps × volumes per step, the same for every method."""
SHARED_KEYS = (*CORPUS_KEYS, *BUDGET_KEYS, "seed")
REFERENCE = "voco"
RUN_KEYS = ("methods", "budget", "corpus", "seed", "configs", "overrides", "protocols")
"""What a resumed comparison must share with the one that started in its folder."""


@dataclass
class Comparison:
    """A comparison file (JSON); see :func:`load_comparison` for the keys. Relative paths are taken from the current
    folder (run from the repository root)."""

    source: str
    methods: dict[str, dict[str, Any]]
    budget: dict[str, int]
    protocols: list[str]
    corpus: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    configs: list[str] = field(default_factory=lambda: ["train.json"])
    overrides: dict[str, Any] = field(default_factory=dict)
    notes: Any = None

    def folder(self, out: Path, method: str) -> Path:
        return out / "pretrain" / method


def _fail(source: str, problem: str) -> ValueError:
    return ValueError(f"{source}: {problem}")


def load_comparison(path: str | Path) -> Comparison:
    """Read and check a comparison file.

    Keys: ``methods`` (method -> its ``voco_pretrain`` overrides, e.g. ``{"simmim": {"mask_ratio": 0.6}}``; ``voco``
    is required, the reference of the paired differences), ``budget`` (``max_steps`` and ``batch_size``),
    ``protocols`` (label-efficiency protocol files; their inits are replaced by the methods' exports and
    ``scratch``), ``corpus`` (any of :data:`CORPUS_KEYS`; the bundle's embedded demo when absent), ``seed``,
    ``configs`` (``voco_pretrain`` configs under ``configs/``, merged before the method's overlay; default
    ``["train.json"]``), ``overrides`` (other ``voco_pretrain`` ids for every method) and ``notes`` (free text,
    e.g. the measured time of each part). A method may not override the corpus, the budget or the seed.
    """
    source = str(path)
    raw = label_efficiency.read_settings(
        path, "comparison", "comparison", Comparison, ("methods", "budget", "protocols")
    )
    comparison = Comparison(source=source, **raw)
    _check(comparison)
    return comparison


def _check(c: Comparison) -> None:
    """Raise a ValueError naming the comparison file for every inconsistent setting."""
    if not isinstance(c.methods, dict) or REFERENCE not in c.methods:
        raise _fail(c.source, f"methods must map method names to overrides and include {REFERENCE!r}.")
    unknown = sorted(set(c.methods) - set(METHODS))
    if unknown:
        raise _fail(c.source, f"unknown methods {unknown}; the methods are {sorted(METHODS)}.")
    if label_efficiency.SCRATCH in c.methods:
        raise _fail(c.source, f"{label_efficiency.SCRATCH!r} is added to every protocol; it is not a method.")
    for name, overrides in c.methods.items():
        shared = sorted(set(overrides) & {*SHARED_KEYS, *c.overrides})
        if shared:
            raise _fail(
                c.source,
                f"method {name!r} overrides {shared}: the corpus, budget, seed and shared "
                "overrides are the same for every method.",
            )
    if sorted(c.budget) != sorted(BUDGET_KEYS) or any(int(v) < 1 for v in c.budget.values()):
        raise _fail(c.source, f"budget needs positive {list(BUDGET_KEYS)}, got {c.budget}.")
    bad_corpus = sorted(set(c.corpus) - set(CORPUS_KEYS))
    if bad_corpus:
        raise _fail(c.source, f"corpus takes {list(CORPUS_KEYS)}, got {bad_corpus}.")
    in_overrides = sorted(set(c.overrides) & set(SHARED_KEYS))
    if in_overrides:
        raise _fail(c.source, f"overrides may not set {in_overrides}: use corpus, budget and seed.")
    if not c.protocols:
        raise _fail(c.source, "protocols needs at least one label-efficiency protocol file.")
    for protocol in c.protocols:
        if not Path(protocol).is_file():
            raise _fail(c.source, f"protocol {protocol} not found.")
    names = [protocol_name(p) for p in c.protocols]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise _fail(c.source, f"two protocols of one bundle with the same file name: {repeated}; rename one.")


def protocol_name(protocol: str | Path) -> str:
    """The folder name of a protocol's runs in a comparison: its bundle and its file name, as in
    ``voco_covid_cls_cpu_demo_protocol`` (bundles name their protocols alike)."""
    bundle = read_json(protocol, "label-efficiency protocol").get("bundle", "unknown_bundle")
    return f"{bundle}_{Path(protocol).stem}"


# ---------------------------------------------------------------- pretraining


def _run_logged(command: list[str], log: Path) -> dict[str, float]:
    """Run ``command`` with its output in ``log``; its wall time and peak resident memory (``os.wait4``)."""
    start = time.perf_counter()
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(process.pid, 0)
    process.returncode = os.waitstatus_to_exitcode(status)
    if process.returncode:
        raise RuntimeError(f"{' '.join(command)} failed (exit {process.returncode}); see {log}.")
    return {"wall_seconds": time.perf_counter() - start, "peak_rss_mib": usage.ru_maxrss / 1024}


def pretrain_overrides(c: Comparison, method: str, folder: Path, cache_dir: Path) -> dict[str, Any]:
    """The ``voco_pretrain`` ids of ``method``'s run: shared overrides, corpus, budget, seed, the method's own, and
    where it writes (``folder``). Every method reads the volumes from one cache: ``cache_dir`` of the shared
    overrides (e.g. a prepared cache of the corpus), else ``cache_dir`` here."""
    return {
        "cache_dir": str(cache_dir),
        **c.overrides,
        **c.corpus,
        **{k: int(v) for k, v in c.budget.items()},
        "seed": int(c.seed),
        **c.methods[method],
        "bundle_root": str(PRETRAIN_BUNDLE.resolve()),
        "output_dir": str(folder / "outputs"),
        "export_path": str(folder / "model.pt"),
        "resume": True,
    }


def pretrain_method(c: Comparison, method: str, out: Path) -> dict[str, Any]:
    """Pretrain ``method`` unless ``<out>/pretrain/<method>/pretrain.json`` exists (a killed run resumes from its last
    checkpoint); then its record: the export, ``model.json``, the cost (``outputs/cost.json``) and the wall time."""
    folder = c.folder(out, method)
    record_path = folder / "pretrain.json"
    if record_path.is_file():
        return read_json(record_path, "pretraining record")
    folder.mkdir(parents=True, exist_ok=True)
    overrides = pretrain_overrides(c, method, folder, out / "pretrain" / "cache")
    overrides_file = folder / "overrides.json"
    atomic_save_text(json.dumps(overrides, indent=2) + "\n", overrides_file)
    configs = PRETRAIN_BUNDLE.resolve() / "configs"
    files = [configs / name for name in c.configs] + [configs / get_method(method).overlay, overrides_file]
    resumed_at = max(checkpoint_steps(folder / "outputs" / "checkpoints"), default=0)
    command = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        json.dumps([str(f) for f in files]),
    ]
    command += ["--meta_file", str(configs / "metadata.json"), "--logging_file", str(configs / "logging.conf")]
    logger.info(f"pretraining {method}" + (f" (resuming at step {resumed_at})" if resumed_at else ""))
    usage = _run_logged(command, folder / f"train_from_{resumed_at}.log")
    record = {
        "method": method,
        "settings": c.methods[method],
        "overrides": overrides,
        "config_files": [str(f) for f in files],
        "export": str(folder / "model.pt"),
        "sha256": label_efficiency.file_sha256(folder / "model.pt"),
        "model": read_json(folder / "model.json", "export record"),
        "cost": read_json(folder / "outputs" / "cost.json", "cost record"),
        "resumed_at": resumed_at,
        **usage,
        "version": voco_components.__version__,
    }
    atomic_save_text(json.dumps(record, indent=2) + "\n", record_path)
    return record


# ---------------------------------------------------------------- protocols


def derived_protocol(c: Comparison, protocol: str, out: Path, exports: dict[str, str]) -> Path:
    """``<out>/protocols/<name>.json`` (:func:`protocol_name`): ``protocol`` with the methods' exports and ``scratch``
    as its inits."""
    raw = read_json(protocol, "label-efficiency protocol")
    raw["inits"] = {**exports, label_efficiency.SCRATCH: None}
    raw.pop("make_missing", None)
    path = out / "protocols" / f"{protocol_name(protocol)}.json"
    text = json.dumps(raw, indent=2) + "\n"
    if path.is_file() and path.read_text() != text:
        raise ValueError(f"{path}: holds another protocol; use a new --out folder for a changed comparison.")
    atomic_save_text(text, path)
    return path


def run_comparison(config: str | Path, out: str | Path) -> Path:
    """Pretrain every method, run every protocol with every export, and summarise; returns ``table.md``'s path.

    Writes ``<out>/comparison.json`` (the comparison as run), ``<out>/pretrain/<method>/`` (the bundle's outputs,
    ``model.pt``, ``model.json`` and ``pretrain.json``, the record that marks it done), ``<out>/pretrain/cache``,
    ``<out>/protocols/<name>.json`` and ``<out>/protocols/<name>/`` (:func:`protocol_name`; the label-efficiency
    runner's folder),
    ``<out>/timings.json`` (seconds of each part, summed over the calls) and the summary. Every part already done
    is skipped.
    """
    c = load_comparison(config)
    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    record = {k: v for k, v in c.__dict__.items()}
    record["version"] = voco_components.__version__
    existing = out / "comparison.json"
    if existing.is_file():
        earlier = json.loads(existing.read_text())
        changed = sorted(k for k in RUN_KEYS if earlier.get(k) != record[k])
        if changed:
            raise ValueError(f"{existing}: a comparison with other {changed}; use a new --out folder.")
    else:
        atomic_save_text(json.dumps(record, indent=2) + "\n", existing)
    timings_path = out / "timings.json"
    timings: dict[str, float] = read_json(timings_path, "timings") if timings_path.is_file() else {}

    def add_time(part: str, start: float) -> None:
        timings[part] = timings.get(part, 0.0) + time.perf_counter() - start
        atomic_save_text(json.dumps(timings, indent=2) + "\n", timings_path)

    exports = {}
    for method in c.methods:
        start = time.perf_counter()
        exports[method] = pretrain_method(c, method, out)["export"]
        add_time(f"pretrain/{method}", start)
    for protocol in c.protocols:
        start = time.perf_counter()
        path = derived_protocol(c, protocol, out, exports)
        label_efficiency.run_protocol(path, out / "protocols" / path.stem)
        add_time(f"protocol/{path.stem}", start)
    return summarize(out)


# ---------------------------------------------------------------- summary


def _number(value: Any, digits: int = 3) -> str:
    return "–" if not isinstance(value, (int, float)) or value != value else f"{value:.{digits}f}"


def pretraining_markdown(records: dict[str, dict[str, Any]], timings: dict[str, float]) -> str:
    """Per method: its pretext metrics and the organ probe at the end, and its cost (the wall time summed over the
    calls that pretrained it, from ``timings``)."""
    lines = [
        "| method | pretext metric at the end | organ probe, linear / kNN accuracy | s / step | peak memory (MiB) "
        "| crops / step | voxels / step | pretraining wall time |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for method, r in records.items():
        metrics = r["model"].get("metrics", {})
        pretext = ", ".join(
            f"{name.removeprefix('val_')} {_number(metrics.get(name))}" for name in get_method(method).pretext_metrics
        )
        probe = f"{_number(metrics.get('val_' + PROBE_SCORES[1]))} / {_number(metrics.get('val_' + PROBE_SCORES[0]))}"
        cost = r["cost"]
        lines.append(
            f"| {method} | {pretext} | {probe} | {_number(cost['seconds_per_step'], 2)} "
            f"| {cost['peak_memory_mib']:.0f} | {cost['crops_per_step']} | {cost['voxels_per_step'] / 1e6:.2f} M "
            f"| {timings.get(f'pretrain/{method}', r['wall_seconds']) / 60:.1f} min |"
        )
    lines.append(
        "\nThe metrics are the last held-out validation's (`models/model.json`); s / step is the median time of a "
        "training step (data wait included, the first step left out) and the peak memory the process's "
        "(`outputs/cost.json`: peak RSS on CPU, peak CUDA allocation on a GPU); crops and voxels per step count every "
        "network input of one step of one rank."
    )
    return "\n".join(lines) + "\n"


def downstream_markdown(rows: list[dict[str, Any]], inits: Sequence[str]) -> str:
    """Per run-level metric, probe and budget: every init's mean ± SD, 95 % CI, and the paired differences from
    ``scratch`` and from ``voco`` with their Holm-corrected p-values (across budgets)."""
    versus = {
        base: label_efficiency.summary_table(rows, baseline=base) for base in (label_efficiency.SCRATCH, REFERENCE)
    }
    keyed = {base: {(e["metric"], e["init"], e["probe"], e["budget"]): e for e in t} for base, t in versus.items()}
    table = versus[label_efficiency.SCRATCH]
    order = {name: i for i, name in enumerate(inits)}
    lines = []
    for metric in dict.fromkeys(e["metric"] for e in table):
        lines += [
            f"#### {metric}",
            "",
            "| probe | budget | init | n | mean ± SD | 95 % CI | Δ vs scratch (p Holm) | Δ vs voco (p Holm) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        cells = sorted(
            (e for e in table if e["metric"] == metric),
            key=lambda e: (e["probe"], float(e["budget"]), order.get(e["init"], len(order))),
        )
        for e in cells:
            key = (e["metric"], e["init"], e["probe"], e["budget"])
            diffs = []
            for base in (label_efficiency.SCRATCH, REFERENCE):
                d = keyed[base][key]
                diffs.append(f"{d['diff']:+.3f} ({_number(d['p_holm'])})" if d["n_pairs"] else "–")
            lines.append(
                f"| {e['probe']} | {e['budget']} | {e['init']} | {e['n']} | {_number(e['mean'])} ± {_number(e['sd'])} "
                f"| [{_number(e['ci_low'])}, {_number(e['ci_high'])}] | {diffs[0]} | {diffs[1]} |"
            )
        lines.append("")
    return "\n".join(lines)


def summarize(out: str | Path) -> Path:
    """Write ``<out>/table.md`` and ``<out>/curve.png`` from the pretraining records and the protocols' results."""
    out = Path(out)
    comparison = read_json(out / "comparison.json", "comparison record")
    methods = list(comparison["methods"])
    records = {m: read_json(out / "pretrain" / m / "pretrain.json", "pretraining record") for m in methods}
    budget = comparison["budget"]
    timings = read_json(out / "timings.json", "timings") if (out / "timings.json").is_file() else {}
    volumes = f"{budget['batch_size']} volume" + ("s" if budget["batch_size"] != 1 else "")
    parts = [
        "# Pretraining methods at an equal budget",
        "",
        f"Budget: {budget['max_steps']} optimiser steps × {volumes} per step, seed {comparison['seed']}, "
        f"the same stream of volumes for every method ({comparison['source']}).",
        "",
        "## Pretraining",
        "",
        pretraining_markdown(records, timings),
    ]
    protocols = [protocol_name(p) for p in comparison["protocols"]]
    curves = []
    for name in protocols:
        folder = out / "protocols" / name
        rows = label_efficiency.read_results(folder / "results.csv")
        protocol = read_json(folder / "protocol.json", "protocol record")
        parts += [
            f"## {name} ({protocol['bundle']}, {protocol['task']})",
            "",
            downstream_markdown(rows, [*methods, "scratch"]),
        ]
        table = label_efficiency.summary_table(rows)
        metric = label_efficiency.PRIMARY_METRIC[protocol["task"]]
        curves.append((name, table, metric, protocol["budget_unit"].replace("_", " ")))
    parts.append(
        "n: seeds (split × train); CI: percentile bootstrap of the mean (10,000 resamples, seed 0); Δ: mean paired "
        "difference (same probe, budget, split and train seed); p: exact two-sided sign-flip permutation test, "
        "Holm-corrected across the budgets of each metric, init and probe."
    )
    path = out / "table.md"
    atomic_save_text("\n".join(parts) + "\n", path)
    plt = label_efficiency.pyplot()
    figure, axes = plt.subplots(1, len(curves), figsize=(6 * len(curves), 4), squeeze=False)
    for ax, (name, table, metric, unit) in zip(axes[0], curves, strict=True):
        label_efficiency.draw_curve(ax, table, metric, unit)
        ax.set_title(name)
    label_efficiency.save_figure(figure, out / "curve.png")
    return path


# ---------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> None:
    """``compare --config <comparison.json> --out <dir>`` or ``summarize <dir>``."""
    parser = argparse.ArgumentParser(prog="python -m voco_components.apps.comparison", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    compare = commands.add_parser("compare", help="pretrain every method, run the protocols, summarise (resumable)")
    compare.add_argument("--config", required=True, help="comparison JSON file")
    compare.add_argument("--out", required=True, help="output folder (resumable)")
    summary = commands.add_parser("summarize", help="write table.md and curve.png of a finished comparison")
    summary.add_argument("out", help="output folder of a comparison")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    print(run_comparison(args.config, args.out) if args.command == "compare" else summarize(args.out))


if __name__ == "__main__":
    main()
