"""Release packaging (`voco_components.apps.package`) and the Model Zoo download path over a loopback HTTP server.

A temporary copy of each bundle gets ``conftest.cpu_overrides`` written into its configs and the weights of
the tiny ``network_def`` they define (so that ``monai.bundle.load`` rebuilds the same network), is
packaged, served from 127.0.0.1, downloaded with ``python -m monai.bundle download``, completed with
``download_large_files`` and loaded with ``monai.bundle.load`` from another working directory.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import zipfile
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import monai.apps.utils
import pytest
import torch
import yaml
from monai.bundle import ConfigParser, download, download_large_files, load

from conftest import BUNDLE_NAMES, BUNDLES, REPO, cpu_overrides
from voco_components.apps.package import PackagingError, main, package_bundle

PACKAGED = [n for n in BUNDLE_NAMES if (BUNDLES / n / "configs" / "metadata.json").is_file()]
RUN_OUTPUTS = ("outputs", "eval", "__pycache__", "checkpoints", "cache", "mlruns", "*.pt", "*.ts")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def copy_bundle(name: str, parent: Path) -> Path:
    """The bundle's folder copied, without run outputs and weights, to ``parent/<name>``."""
    return Path(shutil.copytree(BUNDLES / name, parent / name, ignore=shutil.ignore_patterns(*RUN_OUTPUTS)))


def write_json(path: Path, config: object) -> None:
    path.write_text(json.dumps(config, indent=4) + "\n")


def set_config_ids(bundle: Path, overrides: dict) -> None:
    """Write ``id: value`` overrides into every config JSON that has the id (``_meta_#...`` into metadata.json)."""
    configs = bundle / "configs"
    for key, value in overrides.items():
        if key.startswith("_meta_#"):
            paths, parts = [configs / "metadata.json"], key.split("#")[1:]
        else:
            paths, parts = sorted(p for p in configs.glob("*.json") if p.name != "metadata.json"), key.split("#")
        for path in paths:
            config = json.loads(path.read_text())
            node = config
            for part in parts[:-1]:
                node = node.get(part) if isinstance(node, dict) else None
            if isinstance(node, dict) and parts[-1] in node:
                node[parts[-1]] = value
                write_json(path, config)


def add_tiny_weights(bundle: Path) -> dict[str, torch.Tensor]:
    """Write the CPU overrides into the copy's configs and that network's state to models/model.pt; return it."""
    set_config_ids(bundle, cpu_overrides(BUNDLES / bundle.name))
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser.read_meta(str(bundle / "configs" / "metadata.json"))
    parser["bundle_root"] = str(bundle)
    state = {k: v.detach().clone() for k, v in parser.get_parsed_content("network_def").state_dict().items()}
    (bundle / "models").mkdir(exist_ok=True)
    torch.save(state, bundle / "models" / "model.pt")
    return state


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args) -> None:
        pass


@pytest.fixture
def served(tmp_path) -> Iterator[tuple[Path, str]]:
    """An empty folder served over HTTP on a free loopback port: (folder, base URL); stopped afterwards."""
    root = tmp_path / "served"
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield root, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def run(*args: str) -> subprocess.CompletedProcess:
    """``python ARGS`` from the repository root, where ``-m voco_components...`` finds the package."""
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.mark.parametrize("name", PACKAGED)
def test_download_and_load_reproduce_the_packaged_weights(name, tmp_path, served, monkeypatch, capsys):
    bundle = copy_bundle(name, tmp_path / "src")
    state = add_tiny_weights(bundle)
    version = json.loads((bundle / "configs" / "metadata.json").read_text())["version"]
    stem = f"{name}_v{version}"
    dist, base = served
    assert main([str(bundle), "--out", str(dist), "--weights-url", f"{base}/{stem}_files"]) == 0
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"{dist / stem}.zip  sha256 {sha256(dist / f'{stem}.zip')}"

    with zipfile.ZipFile(dist / f"{stem}.zip") as archive:
        assert f"{name}/models/model.pt" not in archive.namelist()
        listed = yaml.safe_load(archive.read(f"{name}/large_files.yml"))
    assert listed == {
        "large_files": [
            {
                "path": "models/model.pt",
                "url": f"{base}/{stem}_files/model.pt",
                "hash_val": sha256(bundle / "models" / "model.pt"),
                "hash_type": "sha256",
            }
        ]
    }

    target = tmp_path / "downloaded"
    fetched = run(
        "-m", "monai.bundle", "download", "--name", name, "--url", f"{base}/{stem}.zip", "--bundle_dir", str(target)
    )
    assert fetched.returncode == 0, fetched.stderr[-3000:]
    assert (target / name / "configs" / "metadata.json").is_file()
    assert not (target / name / "models" / "model.pt").exists()
    completed = run("-m", "monai.bundle", "download_large_files", "--bundle_path", str(target / name))
    assert completed.returncode == 0, completed.stderr[-3000:]
    assert sha256(target / name / "models" / "model.pt") == sha256(bundle / "models" / "model.pt")

    monkeypatch.chdir(tmp_path)  # load() leaves bundle_root at ".": the inference config must not need the cwd
    net = load(name, bundle_dir=str(target), workflow_type="inference", device="cpu")
    loaded = net.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


# MONAI 1.6 raises HashCheckError and removes the bad file; 1.5 raises a RuntimeError and leaves it in place
HashCheckError = getattr(monai.apps.utils, "HashCheckError", None)


@pytest.mark.skipif(HashCheckError is None, reason="MONAI < 1.6 has no HashCheckError and keeps the bad file")
def test_a_served_file_with_the_wrong_hash_is_refused(tmp_path, served):
    bundle = copy_bundle("voco_pretrain", tmp_path / "src")
    (bundle / "models").mkdir(exist_ok=True)
    (bundle / "models" / "model.pt").write_bytes(os.urandom(4096))
    dist, base = served
    version = json.loads((bundle / "configs" / "metadata.json").read_text())["version"]
    result = package_bundle(bundle, dist, weights_url=f"{base}/voco_pretrain_v{version}_files")
    served_file = result.files_dir / "model.pt"
    served_file.write_bytes(os.urandom(4096))  # the host now serves other bytes than the ones packaged

    download(name="voco_pretrain", url=f"{base}/{result.zip_path.name}", bundle_dir=str(tmp_path / "d"), progress=False)
    extracted = tmp_path / "d" / "voco_pretrain"
    with pytest.raises(HashCheckError, match=r"sha256 hash check of downloaded file failed.*models/model\.pt"):
        download_large_files(bundle_path=str(extracted))
    assert not (extracted / "models" / "model.pt").exists()

    # a local copy that differs from large_files.yml is refused too: rerunning the command verifies the files
    (extracted / "models").mkdir(exist_ok=True)
    shutil.copyfile(served_file, extracted / "models" / "model.pt")
    with pytest.raises(HashCheckError, match=r"sha256 hash check of existing file failed.*models/model\.pt"):
        download_large_files(bundle_path=str(extracted))


def test_zip_layout_exclusions_and_large_files(tmp_path):
    bundle = copy_bundle("voco_pretrain", tmp_path / "src")
    release = sorted(p.relative_to(bundle).as_posix() for p in bundle.rglob("*") if p.is_file())
    (bundle / "models").mkdir(exist_ok=True)
    (bundle / "models" / "model.pt").write_bytes(b"weights")  # small, but model.pt always goes to large files
    (bundle / "docs" / "atlas.bin").write_bytes(
        os.urandom(300_000)
    )  # over the threshold below, unlike the bundle's files
    for junk in ("outputs/cache/a.pt", "eval/schema.json", "configs/__pycache__/x.pyc", "models/checkpoints/c.pt"):
        (bundle / junk).parent.mkdir(parents=True, exist_ok=True)
        (bundle / junk).write_text("run output")
    (bundle / "configs" / ".train.json.123.tmp").write_text("partial write")

    result = package_bundle(bundle, tmp_path / "dist", weights_url="https://example.org/w/", large_file_size=250_000)

    expected = {f"voco_pretrain/{p}" for p in release}  # the source large_files.yml is replaced by the written one
    with zipfile.ZipFile(result.zip_path) as archive:
        infos = archive.infolist()
        assert {i.filename for i in infos} == expected
        assert [i.filename for i in infos] == sorted(expected)
        for info in infos:
            assert info.date_time == (2022, 5, 30, 0, 0, 0) and info.compress_type == zipfile.ZIP_DEFLATED
            if not info.filename.endswith("large_files.yml"):
                assert archive.read(info) == (bundle.parent / info.filename).read_bytes(), info.filename
        listed = yaml.safe_load(archive.read("voco_pretrain/large_files.yml"))["large_files"]
    assert [e["path"] for e in listed] == ["docs/atlas.bin", "models/model.pt"]
    for entry in listed:
        file_name = Path(entry["path"]).name  # the large files are served from one flat folder
        assert entry["url"] == f"https://example.org/w/{file_name}"
        assert entry["hash_val"] == sha256(bundle / entry["path"]) and entry["hash_type"] == "sha256"
        assert (result.files_dir / file_name).read_bytes() == (bundle / entry["path"]).read_bytes()
    version = json.loads((bundle / "configs" / "metadata.json").read_text())["version"]
    assert result.files_dir == tmp_path / "dist" / f"voco_pretrain_v{version}_files"
    assert sorted(p.name for p in result.files_dir.iterdir()) == ["atlas.bin", "model.pt"]

    # reproducible: another copy with other timestamps gives the same bytes
    other = Path(shutil.copytree(bundle, tmp_path / "other" / "voco_pretrain"))
    for path in other.rglob("*"):
        os.utime(path, (1e9, 1e9))
    again = package_bundle(other, tmp_path / "dist2", weights_url="https://example.org/w/", large_file_size=250_000)
    assert again.zip_path.read_bytes() == result.zip_path.read_bytes()


def without_metadata(bundle: Path) -> None:
    (bundle / "configs" / "metadata.json").unlink()


def broken_metadata(bundle: Path) -> None:
    (bundle / "configs" / "metadata.json").write_text('{"version": "0.1.0",\n')


def version_not_in_changelog(bundle: Path) -> None:
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    write_json(bundle / "configs" / "metadata.json", {**meta, "version": "9.9.9"})


def without_model(bundle: Path) -> None:
    (bundle / "models" / "model.pt").unlink()


def two_space_json(bundle: Path) -> None:
    path = bundle / "configs" / "inference.json"
    path.write_text(json.dumps(json.loads(path.read_text()), indent=2) + "\n")


def no_final_newline(bundle: Path) -> None:
    path = bundle / "configs" / "train.json"
    path.write_text(path.read_text().rstrip("\n"))


def two_large_files_named_alike(bundle: Path) -> None:
    (bundle / "docs" / "model.pt").write_bytes(bytes(2 * 1024 * 1024))


REFUSALS = {
    "no_metadata": (without_metadata, r"configs/metadata\.json: file not found"),
    "invalid_metadata": (broken_metadata, r"configs/metadata\.json: not valid JSON"),
    "version_not_in_changelog": (
        version_not_in_changelog,
        r"metadata\.json: version 9\.9\.9 has no entry in 'changelog'",
    ),
    "no_model": (without_model, r"models/model\.pt: file not found"),
    "two_space_json": (two_space_json, r"configs/inference\.json: not 4-space indented with key order kept"),
    "no_final_newline": (no_final_newline, r"configs/train\.json: not 4-space indented with key order kept"),
    "large_files_named_alike": (
        two_large_files_named_alike,
        r"models/model\.pt and .*docs/model\.pt: large files must have distinct names",
    ),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_a_bundle_that_cannot_be_released_is_refused_by_name(tmp_path, case):
    bundle = copy_bundle("voco_pretrain", tmp_path / "src")
    (bundle / "models").mkdir(exist_ok=True)
    (bundle / "models" / "model.pt").write_bytes(b"weights")
    spoil, message = REFUSALS[case]
    spoil(bundle)
    with pytest.raises(PackagingError, match=message):
        package_bundle(bundle, tmp_path / "dist")
    assert not list((tmp_path / "dist").glob("*.zip"))


def test_the_command_line_reports_a_refusal_without_a_traceback(tmp_path):
    bundle = copy_bundle("voco_pretrain", tmp_path / "src")
    result = run("-m", "voco_components.apps.package", str(bundle), "--out", str(tmp_path / "dist"))
    assert result.returncode == 2
    assert (
        result.stderr.strip()
        == f"error: {bundle / 'models' / 'model.pt'}: file not found; train or export the model first"
    )
