"""The library's layers import downwards only: read every module's imports (module-level and inside functions)
and check each against the layer order of the README's "Layout" section."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "voco_components"

LAYER = {
    "utils": 0,
    "transforms": 1,
    "losses": 1,
    "networks": 1,
    "data": 2,
    "variants": 2,
    "engines": 3,
    "metrics": 4,
    "evaluation": 4,
    "handlers": 5,
    "apps": 5,
}
"""Lower numbers sit lower; a part may import its own subpackage, a peer in PEERS, or anything lower."""
PEERS = ({"transforms", "losses", "networks"}, {"metrics", "evaluation"})
ALGORITHM = {"transforms", "losses", "networks"}


def part_of(module: str) -> str | None:
    """``voco_components.data.dataset`` -> ``data``; the bare package (its ``__version__``) -> None."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else None


def module_name(path: Path, package: Path = PACKAGE) -> str:
    relative = path.relative_to(package.parent).with_suffix("")
    parts = list(relative.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path = PACKAGE) -> list[tuple[int, str]]:
    """(line, absolute module name) of every ``voco_components`` import in the file, relative ones resolved."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
    return [(line, m) for line, m in found if m == "voco_components" or m.startswith("voco_components.")]


def allowed(importer: str, imported: str) -> bool:
    if importer == imported or any(importer in group and imported in group for group in PEERS):
        return True
    return LAYER[imported] < LAYER[importer]


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if "demo_data" not in p.parts)


def test_every_part_of_the_library_has_a_layer():
    """A new subpackage or top-level module must be placed in the layer order before it can land."""
    parts = {part_of(module_name(p)) for p in MODULES} - {None}
    assert parts <= set(LAYER), f"not in the layer order: {sorted(parts - set(LAYER))}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_imports_point_down(path):
    importer = part_of(module_name(path))
    if importer is None:
        return
    wrong = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
        for line, module in imported_modules(path)
        if (imported := part_of(module)) is not None and not allowed(importer, imported)
    ]
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_algorithm_imports_nothing_from_the_layers_above():
    above = {"data", "engines", "handlers", "evaluation", "metrics", "apps", "variants"}
    wrong = [
        f"{path.relative_to(PACKAGE.parent)}:{line} imports {module}"
        for path in MODULES
        if part_of(module_name(path)) in ALGORITHM
        for line, module in imported_modules(path)
        if part_of(module) in above
    ]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_a_wrong_import(tmp_path):
    """The reader resolves relative and function-level imports, so a violation cannot hide in either form."""
    module = tmp_path / "voco_components" / "transforms" / "bad.py"
    module.parent.mkdir(parents=True)
    module.write_text(
        "def f():\n    from ..data.dataset import VoCoStepDataset\n    import voco_components.apps.ccii\n"
    )
    modules = [m for _, m in imported_modules(module, root=tmp_path / "voco_components")]
    assert modules == ["voco_components.data.dataset", "voco_components.apps.ccii"]
    assert not allowed("transforms", "data") and not allowed("transforms", "apps")
    assert allowed("handlers", "engines") and allowed("losses", "networks") and not allowed("engines", "handlers")
