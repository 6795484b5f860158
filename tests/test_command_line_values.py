"""The bundle command line means what it says: ``--amp false`` is off and ``--pretrained null`` is none, in every
bundle, for every boolean and nullable id, through one shared reader (``voco_components.utils``)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from monai.bundle import ConfigParser

from conftest import BUNDLES, PRETRAIN_TINY, exception_chain, run_bundle_cli
from voco_components.utils import as_bool, as_optional

# ------------------------------------------------------------------------------------------------- the readers


@pytest.mark.parametrize(
    ("value", "expected"),
    [(True, True), (False, False), (1, True), (0, False), ("true", True), ("false", False), ("True", True)]
    + [("False", False), ("1", True), ("0", False), (" false ", False), ("TRUE", True)],
)
def test_as_bool_reads_what_users_write(value, expected):
    assert as_bool(value, "amp") is expected


@pytest.mark.parametrize("value", ["maybe", "", "no", 2, -1, None, 0.5, "null"])
def test_as_bool_refuses_anything_else_naming_the_id(value):
    with pytest.raises(ValueError, match=r"`resume` must be true or false .* got"):
        as_bool(value, "resume")


@pytest.mark.parametrize("value", [None, "null", "None", "none", "NULL"])
def test_as_optional_reads_null_as_none(value):
    assert as_optional(value) is None


@pytest.mark.parametrize("value", ["/data/model.pt", "voco_b", 0, 2, False, "", "nullable.pt"])
def test_as_optional_keeps_every_other_value(value):
    assert as_optional(value) == value


# ------------------------------------------------------------------------------ every id of every bundle config


def bundle_configs(bundle: Path) -> list[Path]:
    """The bundle's config files (overlays included), without metadata and the label-efficiency protocols."""
    return [
        p
        for p in sorted((bundle / "configs").rglob("*.json"))
        if p.name != "metadata.json" and "protocol" not in p.name
    ]


def typed_ids(bundle: Path) -> tuple[set[str], set[str]]:
    """(boolean ids, nullable ids): top-level ids whose value is a bool (or CUDA's availability) or null in any
    config file of the bundle, and the downstream bundles' ``pretrained`` and ``fold``."""
    booleans, nullables = set(), set()
    for path in bundle_configs(bundle):
        for key, value in json.loads(path.read_text()).items():
            if isinstance(value, bool) or value == "$torch.cuda.is_available()":
                booleans.add(key.lstrip("+"))
            elif value is None or key in ("pretrained", "fold"):
                nullables.add(key.lstrip("+"))
    return booleans, nullables


def references(bundle: Path, name: str) -> list[tuple[str, str]]:
    """(file, string) of every config string of the bundle that refers to ``@name``."""
    pattern = re.compile(rf"@{name}(?![#\w])")
    found = []
    for path in bundle_configs(bundle):
        for text in re.findall(r'"((?:[^"\\]|\\.)*)"', path.read_text()):
            if pattern.search(text):
                found.append((path.name, text))
    return found


BUNDLE_DIRS = sorted(p for p in BUNDLES.iterdir() if p.is_dir())


@pytest.mark.parametrize("bundle", BUNDLE_DIRS, ids=lambda p: p.name)
def test_every_boolean_and_nullable_id_is_read_through_the_shared_reader(bundle):
    """A raw ``@amp`` would take the command line's string 'false' as true: every reference of a boolean id is
    ``as_bool(@id, 'id')`` and of a nullable id ``as_optional(@id)``, so a new id is held to it as well."""
    booleans, nullables = typed_ids(bundle)
    assert {"amp", "resume", "compile", "gradient_checkpointing"} <= booleans
    raw = []
    for name in sorted(booleans | nullables):
        reader = f"as_bool(@{name}, '{name}')" if name in booleans else f"as_optional(@{name})"
        for file, text in references(bundle, name):
            if len(re.findall(rf"@{name}(?![#\w])", text)) != text.count(reader):
                raw.append(f"{file}: {text}")
    assert not raw, "ids read without the shared reader:\n" + "\n".join(raw)


def consumers(config: dict, name: str, reader: str, path: str = "") -> list[str]:
    """Config ids whose whole value is ``$voco_components.utils.<reader>`` of ``@name``."""
    found = []
    items = config.items() if isinstance(config, dict) else enumerate(config) if isinstance(config, list) else []
    for key, value in items:
        child = f"{path}#{key}" if path else str(key)
        if isinstance(value, str) and value.startswith(f"$voco_components.utils.{reader}(@{name}"):
            found.append(child)
        else:
            found += consumers(value, name, reader, child)
    return found


def parsed(bundle: Path, configs: list[str], item: str, **overrides) -> object:
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / c) for c in configs])
    parser.update(overrides)
    parser.parse()
    return parser.get_parsed_content(item)


@pytest.mark.parametrize("bundle", BUNDLE_DIRS, ids=lambda p: p.name)
def test_false_from_the_command_line_is_false_at_every_consumer(bundle):
    """What ``--amp false`` hands over (the string) reaches each consumer as False, ``True`` as True, and a
    misspelling stops the run naming the id."""
    config = ConfigParser.load_config_files([str(bundle / "configs" / "train.json")])
    booleans, _ = typed_ids(bundle)
    checked = 0
    for name in sorted(booleans):
        for item in consumers(config, name, "as_bool"):
            assert parsed(bundle, ["train.json"], item, **{name: "false"}) is False, item
            assert parsed(bundle, ["train.json"], item, **{name: "True"}) is True, item
            with pytest.raises(Exception) as error:
                parsed(bundle, ["train.json"], item, **{name: "maybe"})
            assert f"`{name}` must be true or false" in "".join(str(e) for e in exception_chain(error.value))
            checked += 1
    assert checked >= 3


@pytest.mark.parametrize("bundle", ["voco_btcv_seg", "voco_covid_cls", "voco_cxr14_cls"])
def test_pretrained_null_from_the_command_line_is_none(bundle):
    config = ConfigParser.load_config_files([str(BUNDLES / bundle / "configs" / "train.json")])
    items = consumers(config, "pretrained", "as_optional")
    assert items, "the export's record reads pretrained through as_optional"
    for item in items:
        assert parsed(BUNDLES / bundle, ["train.json"], item, pretrained="null") is None
        assert parsed(BUNDLES / bundle, ["train.json"], item, pretrained="/data/model.pt") == "/data/model.pt"


@pytest.mark.slow
def test_a_misspelt_flag_stops_the_bundle_command_naming_it(tmp_path):
    overrides = {**PRETRAIN_TINY, "bundle_root": str(tmp_path), "max_steps": 1, "amp": "maybe"}
    result = run_bundle_cli("voco_pretrain", ["train.json"], overrides, timeout=300)
    assert result.returncode != 0
    assert "`amp` must be true or false" in result.stderr
