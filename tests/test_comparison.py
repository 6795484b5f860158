"""The method comparison: its file's checks, and the runner at a tiny size, killed mid-way and resumed."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from conftest import BUNDLES, PRETRAIN_TINY, REPO
from voco_components.apps import comparison, demo_covid
from voco_components.engines import METHODS

SHIPPED = BUNDLES / "voco_pretrain" / "configs" / "comparison"


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory) -> Path:
    """The synthetic classification demo set with 3 patients per class (18 volumes, 6 per fold)."""
    return Path(demo_covid.demo_covid_dir(tmp_path_factory.mktemp("covid_demo"), patients_per_class=3))


def write_comparison(folder: Path, demo: Path, **settings) -> Path:
    """A tiny comparison: voco and simclr, 4 steps of 1 volume, then a knn protocol on the classification demo."""
    folder.mkdir(parents=True, exist_ok=True)
    protocol = {
        "bundle": "voco_covid_cls",
        "configs": ["train.json", "cpu_demo.json"],
        "overrides": {"num_workers": 0, "batch_size": 1},
        "dataset_dir": str(demo),
        "fold": 0,
        "inits": {"voco": "replaced.pt", "scratch": None},
        "probes": ["knn"],
        "budgets": [1, 2],
        "budget_unit": "patients_per_class",
        "split_seeds": [0, 1],
    }
    (folder / "protocol.json").write_text(json.dumps(protocol))
    tiny = {k: v for k, v in PRETRAIN_TINY.items() if k not in ("max_steps", "batch_size")}
    config = {
        "configs": ["train.json"],
        "overrides": tiny,
        "budget": {"max_steps": 4, "batch_size": 1},
        "methods": {"voco": {}, "simclr": {"temperature": 0.5}},
        "protocols": [str(folder / "protocol.json")],
        **settings,
    }
    path = folder / "comparison.json"
    path.write_text(json.dumps(config))
    return path


def test_comparison_errors_name_the_file(tmp_path, small_demo):
    good = json.loads(write_comparison(tmp_path, small_demo).read_text())
    cases = [
        ({"methods": {"simclr": {}}}, "include 'voco'"),
        ({"methods": {"voco": {}, "mae": {}}}, r"unknown methods \['mae'\]; the methods are"),
        ({"methods": {"voco": {}, "simmim": {"max_steps": 10}}}, "same for every method"),
        ({"methods": {"voco": {}, "simmim": {"num_workers": 2}}}, "same for every method"),
        ({"budget": {"max_steps": 4}}, "budget needs"),
        ({"overrides": {"seed": 3}}, "use corpus, budget and seed"),
        ({"corpus": {"roi_size": [32, 32, 32]}}, "corpus takes"),
        ({"protocols": ["nope.json"]}, "nope.json not found"),
        ({"colour": 1}, "unknown keys"),
    ]
    for change, message in cases:
        path = tmp_path / "bad.json"
        path.write_text(json.dumps({**good, **change}))
        with pytest.raises(ValueError, match=message) as error:
            comparison.load_comparison(path)
        assert str(path) in str(error.value)


def test_protocols_of_one_file_name_get_a_folder_per_bundle(tmp_path, small_demo):
    """The bundles all name their CPU protocol ``cpu_demo_protocol.json``: a comparison runs each in its own folder,
    and refuses two protocols that would share one."""
    good = json.loads(write_comparison(tmp_path, small_demo).read_text())
    content = json.loads((tmp_path / "protocol.json").read_text())
    paths = []
    for folder, bundle in (("a", "voco_covid_cls"), ("b", "voco_btcv_seg"), ("c", "voco_covid_cls")):
        (tmp_path / folder).mkdir()
        paths.append(tmp_path / folder / "cpu_demo_protocol.json")
        paths[-1].write_text(json.dumps({**content, "bundle": bundle}))
    names = [comparison.protocol_name(p) for p in paths[:2]]
    assert names == ["voco_covid_cls_cpu_demo_protocol", "voco_btcv_seg_cpu_demo_protocol"]
    both = tmp_path / "both.json"
    both.write_text(json.dumps({**good, "protocols": [str(p) for p in paths[:2]]}))
    assert comparison.load_comparison(both).protocols == [str(p) for p in paths[:2]]
    clash = tmp_path / "clash.json"
    clash.write_text(json.dumps({**good, "protocols": [str(paths[0]), str(paths[2])]}))
    with pytest.raises(ValueError, match=r"clash.json: two protocols of one bundle .*voco_covid_cls_cpu_demo"):
        comparison.load_comparison(clash)


def test_shipped_comparisons_load_and_give_every_method_the_same_budget(monkeypatch):
    monkeypatch.chdir(REPO)
    for path in sorted(SHIPPED.glob("*.json")):
        c = comparison.load_comparison(path)
        assert sorted(c.methods) == sorted(METHODS)
        runs = {m: comparison.pretrain_overrides(c, m, Path("/out") / m, Path("/cache")) for m in c.methods}
        for key in (*comparison.SHARED_KEYS, "cache_dir"):
            assert len({json.dumps(r.get(key)) for r in runs.values()}) == 1, (path, key)
        assert {r["export_path"] for r in runs.values()} == {f"/out/{m}/model.pt" for m in c.methods}


def result_files(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in sorted(out.glob("protocols/*/runs/**/result.json"))}


@pytest.mark.slow  # about 2 minutes on a shared 2-core VM: 3 tiny pretrainings, 2 encoders' features, 12 knn fits
def test_runner_killed_mid_pretraining_resumes_and_summarises(tmp_path, small_demo):
    config = write_comparison(tmp_path, small_demo)
    out = tmp_path / "out"
    command = [sys.executable, "-m", "voco_components.apps.comparison", "compare", "--config", str(config)]
    command += ["--out", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = subprocess.Popen(command, cwd=REPO, env=env, start_new_session=True, stdout=subprocess.DEVNULL)
    second = out / "pretrain" / "simclr" / "outputs" / "checkpoints" / "checkpoint_2.pt"
    deadline = time.time() + 600
    while time.time() < deadline and not second.is_file() and process.poll() is None:
        time.sleep(0.1)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    first = out / "pretrain" / "voco" / "pretrain.json"
    assert first.is_file() and not (out / "pretrain" / "simclr" / "pretrain.json").exists()
    finished = first.stat().st_mtime_ns

    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    assert first.stat().st_mtime_ns == finished  # the finished method is not pretrained again
    records = {m: json.loads((out / "pretrain" / m / "pretrain.json").read_text()) for m in ("voco", "simclr")}
    assert records["simclr"]["resumed_at"] == 2 and records["voco"]["resumed_at"] == 0
    for method, record in records.items():
        assert record["model"]["method"] == method and record["model"]["steps"] == 4
        assert record["overrides"]["max_steps"] == 4 and record["overrides"]["batch_size"] == 1
        assert record["overrides"]["seed"] == 0 and record["overrides"]["cache_dir"] == str(out / "pretrain" / "cache")
        assert record["cost"]["crops_per_step"] == {"voco": 4 + 2, "simclr": 2 * 2}[method]
        assert record["cost"]["seconds_per_step"] > 0 and record["peak_rss_mib"] > 0
        state = torch.load(record["export"], weights_only=True)
        assert all(k.startswith("swinViT.") for k in state)
    assert records["simclr"]["settings"] == {"temperature": 0.5}

    protocol = json.loads((out / "protocols" / "voco_covid_cls_protocol.json").read_text())
    assert protocol["inits"] == {
        "voco": records["voco"]["export"],
        "simclr": records["simclr"]["export"],
        "scratch": None,
    }
    rows = list(csv.DictReader(open(out / "protocols" / "voco_covid_cls_protocol" / "results.csv")))
    assert {r["init"] for r in rows} == {"voco", "simclr", "scratch"}
    done = result_files(out)
    assert len(done) == 3 * (2 + 1)  # inits x (budget 1: 2 split seeds; budget 2, the whole pool: one run)

    table = (out / "table.md").read_text()
    for method in ("voco", "simclr"):
        assert f"| {method} |" in table
    assert "Δ vs voco (p Holm)" in table and "balanced_accuracy" in table and (out / "curve.png").stat().st_size > 0
    # a third call redoes nothing; a changed comparison is refused in the same folder
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    assert result_files(out) == done
    changed = tmp_path / "changed.json"
    changed.write_text(json.dumps({**json.loads(config.read_text()), "seed": 1}))
    with pytest.raises(ValueError, match=r"a comparison with other \['seed'\]"):
        comparison.run_comparison(changed, out)
