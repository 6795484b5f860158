"""The Model Zoo's bundle checks (``ci/verify_bundle.py`` and pre-commit), offline, for every bundle folder.

Each check runs once per folder under ``bundles/``, so a new bundle is checked as soon as it exists and a
failure names its bundle. Each bundle runs under ``conftest.cpu_overrides`` (a tiny network).
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, ckpt_export, verify_metadata, verify_net_in_out

from conftest import BUNDLE_NAMES, BUNDLES, REPO, cpu_overrides
from voco_components.apps.package import bundle_files

REQUIRED_FILES = (
    "LICENSE",
    "configs/metadata.json",
    "configs/inference.json",
    "docs/README.md",
    "docs/data_license.txt",
    "large_files.yml",
)
MAX_COMMITTED_BYTES = 1024 * 1024  # pre-commit check-added-large-files --maxkb=1024

pytestmark = pytest.mark.parametrize("name", BUNDLE_NAMES)


def metadata(name: str) -> dict:
    return json.loads((BUNDLES / name / "configs" / "metadata.json").read_text())


def network_parser(name: str) -> ConfigParser:
    """The bundle's inference config and metadata with its CPU overrides applied."""
    configs = BUNDLES / name / "configs"
    parser = ConfigParser()
    parser.read_config(str(configs / "inference.json"))
    parser.read_meta(str(configs / "metadata.json"))
    parser["bundle_root"] = str(BUNDLES / name)
    for key, value in cpu_overrides(BUNDLES / name).items():
        parser[key] = value
    return parser


def test_required_files_exist(name):
    missing = [f for f in REQUIRED_FILES if not (BUNDLES / name / f).is_file()]
    assert not missing, f"{name} lacks {missing}"


def test_version_has_a_changelog_entry(name):
    meta = metadata(name)
    assert meta["version"] in meta["changelog"], f"{name}: version {meta['version']} not in changelog"


def test_metadata_matches_the_zoo_schema(name, schema_file):
    verify_metadata(meta_file=str(BUNDLES / name / "configs" / "metadata.json"), filepath=str(schema_file))


def test_json_files_are_four_space_indented_with_key_order_kept(name):
    bundle = BUNDLES / name
    paths = [bundle / p for p in bundle_files(bundle) if p.suffix == ".json"]
    assert paths, f"{name} has no JSON files"
    for path in paths:
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4) + "\n", f"{path} is not 4-space formatted"


def test_no_committed_file_over_1_mb(name):
    """Files git tracks or would add (not ignored), as pre-commit's check-added-large-files sees them."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z", "--", f"bundles/{name}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\0")
    paths = [REPO / p for p in listed if p and (REPO / p).is_file()]
    assert paths, f"git sees no files in bundles/{name}"
    too_large = {str(p.relative_to(REPO)): p.stat().st_size for p in paths if p.stat().st_size > MAX_COMMITTED_BYTES}
    assert not too_large, f"files over 1 MB (list them in large_files.yml instead): {too_large}"


def test_network_input_and_output_match_the_metadata(name):
    """``verify_net_in_out network_def`` on configs/inference.json: input ``image``, output ``pred``."""
    configs = BUNDLES / name / "configs"
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"),
        bundle_root=str(BUNDLES / name),
        device="cpu",
        **cpu_overrides(BUNDLES / name),
    )


SERVED_IDS = ("preprocessing", "inferer", "postprocessing", "network_def")  # what MONAI Label's bundle tasks build


def test_served_parts_build_without_a_datalist(name, tmp_path):
    """MONAI Label serves a bundle from its own datastore: it instantiates the inference config's preprocessing,
    inferer, postprocessing and network without any dataset, so none of them may read the datalist."""
    parser = network_parser(name)
    parser["dataset_dir"] = str(tmp_path / "absent")
    parser["datalist"] = str(tmp_path / "absent" / "datalist.json")
    built = {key: parser.get_parsed_content(key, instantiate=True) for key in SERVED_IDS if key in parser}
    assert "network_def" in built and "preprocessing" in built, sorted(built)


@pytest.mark.parametrize("workflow_type, config", [("train", "train.json"), ("infer", "inference.json")])
def test_workflow_properties(name, workflow_type, config, tmp_path):
    """``check_properties() == []``; bundle_root is a scratch folder so that nothing is written into the repo."""
    configs = BUNDLES / name / "configs"
    overrides = {k: v for k, v in cpu_overrides(BUNDLES / name).items() if not k.startswith("_meta_#")}
    wf = ConfigWorkflow(
        config_file=str(configs / config),
        meta_file=str(configs / "metadata.json"),
        workflow_type=workflow_type,
        bundle_root=str(tmp_path),
        **overrides,
    )
    wf.initialize()
    assert wf.check_properties() == []


def torchscript_section(readme: str) -> str:
    """The text of the README section whose heading mentions TorchScript ('' when there is none)."""
    found = re.search(r"^#+[^\n]*TorchScript[^\n]*\n(.*?)(?=^#+ |\Z)", readme, re.M | re.S)
    return found.group(1) if found else ""


def test_torchscript_export(name, tmp_path):
    """``ckpt_export network_def`` as the Zoo runs it (script mode); where that cannot work, the README says why.

    A network that scripting refuses must be traced instead, at the metadata's input shape, and reproduce the
    eager output there.
    """
    bundle, net = BUNDLES / name, network_parser(name).get_parsed_content("network_def")
    ckpt = tmp_path / "model.pt"
    torch.save(net.state_dict(), ckpt)
    export = dict(
        net_id="network_def",
        ckpt_file=str(ckpt),
        meta_file=str(bundle / "configs" / "metadata.json"),
        config_file=str(bundle / "configs" / "inference.json"),
        bundle_root=str(bundle),
        **cpu_overrides(bundle),
    )
    image = metadata(name)["network_data_format"]["inputs"]["image"]
    shape = [1, image["num_channels"], *image["spatial_shape"]]
    try:
        ckpt_export(filepath=str(tmp_path / "scripted.ts"), **export)
        exported = torch.jit.load(str(tmp_path / "scripted.ts"))
    except Exception as err:
        readme = bundle / "docs" / "README.md"
        section = torchscript_section(readme.read_text()) if readme.is_file() else ""
        assert "torch.jit.script" in section, (
            f"{name}: script-mode export fails ({type(err).__name__}: {str(err)[:300]}); docs/README.md needs a "
            "TorchScript section saying that torch.jit.script cannot export it and why"
        )
        traced = tmp_path / "traced.ts"  # ckpt_export compares the traced output with the eager one itself
        ckpt_export(
            filepath=str(traced), use_trace=True, input_shape=shape, converter_kwargs={"check_trace": False}, **export
        )
        exported = torch.jit.load(str(traced))
    x = torch.rand(shape)
    with torch.no_grad():
        torch.testing.assert_close(exported(x), net.eval()(x))
