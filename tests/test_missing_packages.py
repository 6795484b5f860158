"""A package that the configs need and that is not installed stops a bundle run with its name and the install
command, not with a missing attribute of ``voco_components`` (a config's ``imports`` swallow ImportErrors)."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

import voco_components
from conftest import BUNDLES

HIDE_AND_RUN = """
import importlib.metadata as metadata, sys
real = metadata.version
def version(name):
    if name == sys.argv[1]:
        raise metadata.PackageNotFoundError(name)
    return real(name)
metadata.version = version
from monai.bundle import run
try:
    run("training", config_file=sys.argv[2], bundle_root=sys.argv[3], max_steps=1)
except Exception as error:
    while error is not None:
        print(type(error).__name__, error)
        error = error.__cause__ or error.__context__
    sys.exit(3)
"""


def test_missing_requirements_names_each_absent_package(monkeypatch):
    installed = metadata.version
    absent = {"blosc2", "einops"}
    monkeypatch.setattr(
        voco_components,
        "version",
        lambda name: (_ for _ in ()).throw(metadata.PackageNotFoundError(name)) if name in absent else installed(name),
    )
    required = {r.split(";")[0].strip() for r in metadata.requires("voco-components") if "extra ==" not in r}
    expected = sorted(r for r in required if r.split(">")[0].split("=")[0].strip() in absent)
    assert sorted(voco_components.missing_requirements()) == expected == ["blosc2>=2.5", "einops"]


def test_nothing_is_missing_here():
    assert voco_components.missing_requirements() == []


@pytest.mark.slow
@pytest.mark.parametrize("bundle", ["voco_pretrain", "voco_btcv_seg"])
def test_a_bundle_run_without_blosc2_names_it_and_the_install_command(tmp_path, bundle):
    config = BUNDLES / bundle / "configs" / "train.json"
    result = subprocess.run(
        [sys.executable, "-c", HIDE_AND_RUN, "blosc2", str(config), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 3, result.stderr[-2000:]
    assert "voco_components needs blosc2>=2.5" in result.stdout and "pip install 'blosc2>=2.5'" in result.stdout
    assert "has no attribute" not in result.stdout + result.stderr
