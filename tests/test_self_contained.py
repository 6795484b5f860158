"""A clone needs nothing beside it: the tests and tools read only files that the repository holds."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from conftest import REPO

MONAILABEL_ENV = REPO / "tools" / "monailabel_env.sh"


def repository_files() -> list[str]:
    """The files a clone of this checkout would have: tracked ones and new ones git does not ignore."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [name for name in listed.split("\0") if name and (REPO / name).is_file()]


def script_paths(script: Path) -> dict[str, Path]:
    """The ``NAME=$REPO/...`` / ``NAME=$RECIPE/...`` path variables of a shell script, resolved in this checkout."""
    variables = {"REPO": REPO}
    for name, base, rest in re.findall(r"^(\w+)=\$(REPO|RECIPE)(/\S*)$", script.read_text(), flags=re.MULTILINE):
        variables[name] = variables[base] / rest.strip("/")
    return variables


def test_monailabel_env_reads_only_files_of_the_repository():
    text = MONAILABEL_ENV.read_text()
    assert "shared" not in text and "MONAILABEL_RECIPE" not in text
    paths = script_paths(MONAILABEL_ENV)
    used = set(re.findall(r'"\$([A-Z_]+)\b', text)) - {"PY", "VENV"}
    assert {"REQUIREMENTS", "CONSTRAINTS", "STAND_IN", "REPO"} <= used
    files = set(repository_files())
    for name in sorted(used):
        path = paths[name]
        assert path.exists(), f"{MONAILABEL_ENV.name} reads {name} = {path}, which does not exist"
        if name == "REPO":  # the package it installs: the repository itself (its venvs are not read)
            assert path.resolve() == REPO.resolve()
            continue
        inside = [path] if path.is_file() else [p for p in path.rglob("*.py") if "__pycache__" not in p.parts]
        for item in inside:
            assert str(item.relative_to(REPO)) in files, f"{item} is not part of the repository"


def test_every_monailabel_requirement_has_a_pinned_version():
    paths = script_paths(MONAILABEL_ENV)
    lines = [line.split("#")[0].strip() for line in paths["REQUIREMENTS"].read_text().splitlines()]
    requirements = [Requirement(line) for line in lines if line]
    pins = {}
    for line in paths["CONSTRAINTS"].read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, version = line.split("==")
            pins[canonicalize_name(name)] = version
    assert pins["monai"] == "1.5.2" and pins["monailabel"] == "0.8.5" and pins["numpy"].startswith("1.")
    for requirement in requirements:
        name = canonicalize_name(requirement.name)
        assert name in pins, f"{requirement} has no pinned version in {paths['CONSTRAINTS'].name}"
        assert requirement.specifier.contains(pins[name]), f"{requirement} excludes its pin {pins[name]}"


def test_the_torchvision_stand_in_provides_what_monailabel_imports(tmp_path):
    shutil.copytree(script_paths(MONAILABEL_ENV)["STAND_IN"], tmp_path / "torchvision")
    check = (
        "import torchvision, torchvision.utils as u\n"
        "for name in ('make_grid', 'save_image'):\n"
        "    try:\n"
        "        getattr(u, name)()\n"
        "    except NotImplementedError as e:\n"
        "        assert name in str(e)\n"
        "    else:\n"
        "        raise SystemExit(name + ' did not raise')\n"
        "print(torchvision.__file__)"
    )
    result = subprocess.run(
        [sys.executable, "-c", check], env={**os.environ, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(tmp_path / "torchvision" / "__init__.py")


def test_a_clone_with_nothing_beside_it_passes_the_zoo_and_packaging_checks(tmp_path):
    """The repository's files alone, in a folder with nothing beside it: the schema check and packaging run."""
    clone = tmp_path / "clone"
    for name in repository_files():
        target = clone / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target)
    assert [p.name for p in clone.parent.iterdir()] == ["clone"]
    selected = ["tests/test_zoo_checks.py::test_metadata_matches_the_zoo_schema", "tests/test_package.py"]
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selected, "-k", "schema or zip_layout"]
    env = {**os.environ, "PYTHONPATH": str(clone)}
    result = subprocess.run(command, cwd=clone, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    expected = len([p for p in (REPO / "bundles").iterdir() if p.is_dir()]) + 1  # a schema check per bundle, the zip
    assert re.search(rf"\b{expected} passed\b", result.stdout), result.stdout[-2000:]
