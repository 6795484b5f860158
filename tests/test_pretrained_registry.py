"""voco_components.networks.pretrained_registry and the loader by name: the published checkpoints' key layouts,
built here from real MONAI networks and served from a loopback HTTP server; download, cache reuse, hash refusal,
architecture checks, the bundles' ``--pretrained <name>`` and the full-size overlays."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import threading
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from monai.networks.nets import SwinUNETR
from torch import nn

from conftest import BUNDLES, bundle_workflow, first_in_chain, run_bundle_cli
from voco_components.apps import label_efficiency
from voco_components.apps.demo import DEMO_DIR, DEMO_ORGANS_DATALIST
from voco_components.apps.weights import describe
from voco_components.apps.weights import main as weights_main
from voco_components.networks import SwinClassifier
from voco_components.networks.encoders import SWIN_ENCODER_BLOCKS
from voco_components.networks.pretrained_registry import (
    PRETRAINED_WEIGHTS,
    WEIGHTS_CACHE_ENV,
    WEIGHTS_REGISTRY_ENV,
    PretrainedWeights,
    check_architecture,
    default_weights_cache,
    fetch_pretrained,
    find_pretrained,
    register,
    swin_architecture,
)
from voco_components.networks.weights import load_pretrained

FS, WINDOW = 12, 4
ENCODER = tuple(f"{block}." for block in SWIN_ENCODER_BLOCKS)


# ---------------------------------------------------------------- a loopback file server


class _Files(SimpleHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.hits.append(self.path)
        super().do_GET()

    def log_message(self, *args) -> None:
        pass


@dataclasses.dataclass
class Server:
    root: Path
    url: str
    hits: list[str]

    def count(self, name: str) -> int:
        return sum(path == f"/{name}" for path in self.hits)


@pytest.fixture
def server(tmp_path) -> Iterator[Server]:
    """Files under ``tmp_path/served`` at ``http://127.0.0.1:<port>/<name>``; every GET is recorded."""
    root = tmp_path / "served"
    root.mkdir()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Files, directory=str(root)))
    httpd.hits = []
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield Server(root, f"http://127.0.0.1:{httpd.server_address[1]}", httpd.hits)
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


def serve(server: Server, name: str, checkpoint: dict) -> Path:
    path = server.root / name
    torch.save(checkpoint, path)
    return path


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def registered() -> Iterator[list[str]]:
    """Names registered by the test, removed again afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        PRETRAINED_WEIGHTS.pop(name, None)


def entry(server: Server, file: str, name: str = "test_voco", **kwargs) -> PretrainedWeights:
    settings = {"feature_size": FS, "use_v2": True, "window_size": WINDOW, "description": "test", "source": "test"}
    return PretrainedWeights(name=name, url=f"{server.url}/{file}", **{**settings, **kwargs})


def add(registered: list[str], weights: PretrainedWeights) -> PretrainedWeights:
    registered.append(weights.name)
    return register(weights)


# ---------------------------------------------------------------- the published layouts, built from real networks


def swin_unetr(use_v2: bool = True, out_channels: int = 3, seed: int = 0, in_channels: int = 1) -> SwinUNETR:
    torch.manual_seed(seed)
    return SwinUNETR(
        in_channels=in_channels, out_channels=out_channels, feature_size=FS, window_size=WINDOW, use_v2=use_v2
    )


def encoder_state(use_v2: bool = True) -> dict[str, torch.Tensor]:
    """swinViT + encoder1..4, 10 of a SwinUNETR: the keys of the published ``VoCo_*_SSL_head.pt``."""
    return {k: v for k, v in swin_unetr(use_v2, seed=7).state_dict().items() if k.startswith(ENCODER)}


class _ProjectionHead(nn.Module):
    """The key layout of the VoCo authors' projection head: three Linear layers in Sequential blocks, with
    parameter-free batch norms."""

    def __init__(self, width: int, hidden: int = 16) -> None:
        super().__init__()
        norm = functools.partial(nn.BatchNorm1d, affine=False, track_running_stats=False)
        self.layer1 = nn.Sequential(nn.Linear(width, hidden), norm(hidden), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Linear(hidden, hidden), norm(hidden), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Linear(hidden, hidden))


def voco_training_state(encoder: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The authors' VoCoHead state: ``backbone.`` encoder, ``student.``/``teacher.`` heads (24·F pooled input)."""
    torch.manual_seed(3)
    heads = {
        f"{side}.{k}": v for side in ("student", "teacher") for k, v in _ProjectionHead(24 * FS).state_dict().items()
    }
    return {**{f"backbone.{k}": v for k, v in encoder.items()}, **heads}


def swinvit_ssl_layout(swin_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """SwinUNETR's ``model_swinvit.pt`` names: ``module.`` + the SwinTransformer's own names, ``mlp.fc1``/``fc2``."""
    renamed = {}
    for key, value in swin_state.items():
        if key.startswith("swinViT."):
            name = "module." + key.removeprefix("swinViT.")
            renamed[name.replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2.")] = value
    return renamed


SSL_HEADS = {
    "module.rotation_head.weight": torch.ones(4, 16 * FS),
    "module.rotation_head.bias": torch.ones(4),
    "module.contrastive_head.weight": torch.ones(8, 16 * FS),
    "module.conv.0.weight": torch.ones(2, 16 * FS, 3, 3, 3),
}


VOCO_LAYOUTS = {
    "VoCo_SSL_head (flat)": lambda enc: dict(enc),
    "VoCoHead training checkpoint": lambda enc: {"global_step": 10, "state_dict": voco_training_state(enc)},
    "VoCoHead model.module.state_dict()": voco_training_state,
    "VoCoHead under DDP": lambda enc: {f"module.{k}": v for k, v in voco_training_state(enc).items()},
}
HEAD_KEYS = sorted(
    f"{side}.layer{i}.0.{p}" for side in ("student", "teacher") for i in (1, 2, 3) for p in ("weight", "bias")
)


# ---------------------------------------------------------------- the built-in registry


def test_builtin_names_point_at_the_published_files_with_their_architectures():
    hf = "https://huggingface.co/Luffy503/VoCo/resolve/main/"
    for size, fs in (("b", 48), ("l", 96), ("h", 192)):
        ssl, omni = PRETRAINED_WEIGHTS[f"voco_{size}"], PRETRAINED_WEIGHTS[f"vocomni_{size}"]
        assert ssl.url == f"{hf}VoCo_{size.upper()}_SSL_head.pt" and ssl.file_name == f"VoCo_{size.upper()}_SSL_head.pt"
        assert omni.url == f"{hf}VoComni_{size.upper()}.pt"
        for weights in (ssl, omni):
            assert weights.architecture == {"feature_size": fs, "use_v2": True, "window_size": 7}
            assert weights.in_channels == 1 and weights.blocks == SWIN_ENCODER_BLOCKS
        assert ssl.hash_type == "md5" and len(ssl.hash_val) == 32 and "eva" in ssl.hash_source
        assert omni.hash_val is None
    ssl = PRETRAINED_WEIGHTS["swinunetr_ssl"]
    assert ssl.file_name == "model_swinvit.pt" and ssl.url.startswith("https://github.com/Project-MONAI/")
    assert ssl.architecture == {"feature_size": 48, "use_v2": False, "window_size": 7} and ssl.blocks == ("swinViT",)


@pytest.mark.parametrize(
    "change, message",
    [
        ({"name": "VoCo-B"}, "name must be"),
        ({"url": "ftp://host/x.pt"}, "http"),
        ({"hash_type": "crc32"}, "hash_type"),
        ({"blocks": ("swinViT", "decoder1")}, "blocks"),
    ],
)
def test_a_bad_entry_is_refused(change, message):
    settings = {"name": "ok", "url": "https://host/x.pt", "feature_size": 12, "use_v2": True}
    with pytest.raises(ValueError, match=message):
        PretrainedWeights(**{**settings, "description": "", "source": "", **change})


def test_register_refuses_a_second_entry_of_a_name(registered):
    first = PretrainedWeights(
        name="test_twice", url="https://a/x.pt", feature_size=12, use_v2=True, description="", source=""
    )
    add(registered, first)
    assert (
        find_pretrained("test_twice") is first
        and find_pretrained("bundles/x.pt") is None
        and find_pretrained(None) is None
    )
    second = dataclasses.replace(first, url="https://b/x.pt")
    with pytest.raises(ValueError, match="registered already"):
        register(second)
    assert register(second, replace=True) is second and find_pretrained("test_twice") is second


def test_cache_folder_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv(WEIGHTS_CACHE_ENV, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_weights_cache() == tmp_path / "home" / ".cache" / "voco_components" / "weights"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_weights_cache() == tmp_path / "xdg" / "voco_components" / "weights"
    monkeypatch.setenv(WEIGHTS_CACHE_ENV, str(tmp_path / "mine"))
    assert default_weights_cache() == tmp_path / "mine"


def test_a_registry_file_adds_names_for_every_process(tmp_path, monkeypatch):
    extra = {"name": "site_b", "url": "https://mirror/VoCo_B_SSL_head.pt", "feature_size": 48, "use_v2": True}
    path = tmp_path / "registry.json"
    path.write_text(json.dumps([{**extra, "description": "mirror", "source": "site", "blocks": ["swinViT"]}]))
    monkeypatch.setenv(WEIGHTS_REGISTRY_ENV, str(path))
    found = find_pretrained("site_b")
    assert found.url == extra["url"] and found.blocks == ("swinViT",) and find_pretrained("voco_b") is not None
    path.write_text(json.dumps([{**extra, "colour": "red"}]))
    with pytest.raises(ValueError, match=r"registry\.json.*unknown keys \['colour'\]"):
        find_pretrained("site_b")
    path.write_text(json.dumps({"site_b": extra}))
    with pytest.raises(ValueError, match=r"registry\.json.*a JSON list"):
        find_pretrained("site_b")


# ---------------------------------------------------------------- download, cache, hashes


def test_downloads_once_then_reuses_the_cached_file(tmp_path, server, registered):
    served = serve(server, "VoCo_T_SSL_head.pt", encoder_state())
    weights = add(registered, entry(server, served.name, hash_val=sha256(served)))
    cache = tmp_path / "cache"
    first = fetch_pretrained("test_voco", cache)
    assert first == cache / served.name and first.read_bytes() == served.read_bytes()
    assert fetch_pretrained(weights, cache) == first
    assert server.count(served.name) == 1
    assert sorted(p.name for p in cache.iterdir()) == [served.name]  # no temporary file left


def test_an_md5_entry_is_checked_with_md5(tmp_path, server, registered):
    served = serve(server, "VoCo_T_SSL_head.pt", encoder_state())
    md5 = hashlib.md5(served.read_bytes()).hexdigest()
    add(registered, entry(server, served.name, hash_val=md5, hash_type="md5"))
    assert fetch_pretrained("test_voco", tmp_path).read_bytes() == served.read_bytes()


def test_a_wrong_download_is_refused_and_leaves_no_file(tmp_path, server, registered):
    served = serve(server, "VoCo_T_SSL_head.pt", encoder_state())
    add(registered, entry(server, served.name, hash_val="0" * 64))
    cache = tmp_path / "cache"
    with pytest.raises(ValueError) as info:
        fetch_pretrained("test_voco", cache)
    message = str(info.value)
    assert f"sha256 {sha256(served)}" in message and "0" * 64 in message and "nothing was written" in message
    assert list(cache.iterdir()) == []
    with pytest.raises(ValueError):  # and it is downloaded again, not taken from a half-written cache
        fetch_pretrained("test_voco", cache)
    assert server.count(served.name) == 2 and list(cache.iterdir()) == []


def test_a_wrong_file_in_the_cache_is_named_and_kept(tmp_path, server, registered):
    served = serve(server, "VoCo_T_SSL_head.pt", encoder_state())
    add(registered, entry(server, served.name, hash_val=sha256(served)))
    (tmp_path / served.name).write_bytes(b"not this")
    with pytest.raises(ValueError, match=rf"{tmp_path / served.name}: the cached file of 'test_voco'.*Delete it"):
        fetch_pretrained("test_voco", tmp_path)
    assert (tmp_path / served.name).read_bytes() == b"not this" and server.count(served.name) == 0


def test_a_prefilled_cache_needs_no_network(tmp_path, server, registered):
    """The offline recipe: the file copied into the cache under the registry's file name, checked by its hash."""
    source = tmp_path / "elsewhere.pt"
    torch.save(encoder_state(), source)
    offline = entry(server, "VoCo_T_SSL_head.pt", hash_val=sha256(source))
    add(registered, dataclasses.replace(offline, url="http://127.0.0.1:9/VoCo_T_SSL_head.pt"))  # nothing listens
    cache = tmp_path / "cache"
    with pytest.raises(RuntimeError, match=rf"copy it to {cache / 'VoCo_T_SSL_head.pt'}"):
        fetch_pretrained("test_voco", cache, progress=False)
    assert list(cache.iterdir()) == []
    (cache / "VoCo_T_SSL_head.pt").write_bytes(source.read_bytes())
    net = swin_unetr()
    report = load_pretrained(net, "test_voco", weights_cache=cache)
    assert report.encoder_fraction == 1.0


def test_a_missing_file_on_the_server_says_how_to_prefill(tmp_path, server, registered):
    add(registered, entry(server, "absent.pt"))
    with pytest.raises(RuntimeError, match="absent.pt failed.*download the file on another machine"):
        fetch_pretrained("test_voco", tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == [server.root]


def test_an_unverified_download_logs_its_sha256(tmp_path, server, registered, caplog):
    served = serve(server, "VoComni_T.pt", encoder_state())
    add(registered, entry(server, served.name))
    with caplog.at_level(logging.WARNING):
        fetch_pretrained("test_voco", tmp_path / "cache")
    assert f"its sha256 is {sha256(served)}" in caplog.text


def test_the_lister_names_the_cache_and_the_download_command_fills_it(tmp_path, server, registered, capsys):
    served = serve(server, "VoCo_T_SSL_head.pt", encoder_state())
    add(registered, entry(server, served.name, hash_val=sha256(served)))
    assert f"weights cache: {tmp_path}" in describe(tmp_path)
    assert f"test_voco: {served.name} (not cached); feature_size 12, use_v2 True, window_size 4" in describe(tmp_path)
    weights_main(["download", "test_voco", "--cache", str(tmp_path)])
    assert capsys.readouterr().out.strip() == str(tmp_path / served.name)
    assert "(cached)" in describe(tmp_path) and (tmp_path / served.name).read_bytes() == served.read_bytes()


# ---------------------------------------------------------------- architecture


def test_the_architecture_is_read_from_the_network():
    assert swin_architecture(swin_unetr(use_v2=False, in_channels=2)) == {
        "feature_size": FS,
        "use_v2": False,
        "window_size": (WINDOW,) * 3,
        "in_channels": 2,
    }
    classifier = SwinClassifier(num_classes=3, feature_size=24, window_size=5, use_v2=True)
    assert swin_architecture(classifier)["feature_size"] == 24 and swin_architecture(classifier)["use_v2"] is True
    with pytest.raises(ValueError, match="no `swinViT`"):
        swin_architecture(nn.Linear(2, 2))


@pytest.mark.parametrize(
    "network, wrong",
    [
        (
            lambda: SwinUNETR(in_channels=1, out_channels=3, feature_size=24, window_size=WINDOW, use_v2=True),
            "feature_size 24",
        ),
        (lambda: swin_unetr(use_v2=False), "use_v2 false"),
        (
            lambda: SwinUNETR(in_channels=1, out_channels=3, feature_size=FS, window_size=7, use_v2=True),
            "window_size [7, 7, 7]",
        ),
    ],
)
def test_a_network_of_other_settings_stops_before_the_download(tmp_path, server, registered, network, wrong):
    served = serve(server, "VoCo_T_SSL_head.pt", encoder_state())
    add(registered, entry(server, served.name))
    with pytest.raises(ValueError) as info:
        load_pretrained(network(), "test_voco", weights_cache=tmp_path / "cache")
    message = str(info.value)
    assert "'test_voco'" in message and f"the network has {wrong}" in message
    assert "needs SwinUNETR with feature_size 12, use_v2 true, window_size 4" in message
    assert (
        "configs/pretrained/test_voco.json" in message and "--feature_size 12 --use_v2 true --window_size 4" in message
    )
    assert server.count(served.name) == 0 and not (tmp_path / "cache").exists()


def test_other_input_channels_are_adapted_not_refused(tmp_path, server, registered):
    served = serve(server, "VoCo_T_SSL_head.pt", encoder_state())
    add(registered, entry(server, served.name))
    assert check_architecture("test_voco", feature_size=FS, use_v2=True, window_size=[WINDOW] * 3, in_channels=4)
    report = load_pretrained(swin_unetr(in_channels=4), "test_voco", weights_cache=tmp_path)
    assert report.encoder_fraction == 1.0 and "swinViT.patch_embed.proj.weight" in report.channel_adapted


# ---------------------------------------------------------------- every encoder tensor lands


def assert_encoder_equals(network: nn.Module, source: dict[str, torch.Tensor]) -> None:
    state = network.state_dict()
    keys = [k for k in state if k.startswith(ENCODER)]
    assert sorted(keys) == sorted(source)
    for key in keys:
        assert torch.equal(state[key], source[key]), key


@pytest.mark.parametrize("layout", sorted(VOCO_LAYOUTS))
def test_every_encoder_tensor_of_the_voco_layouts_lands(tmp_path, server, registered, layout):
    source = encoder_state()
    served = serve(server, "VoCo_T_SSL_head.pt", VOCO_LAYOUTS[layout](source))
    add(registered, entry(server, served.name, hash_val=sha256(served)))
    net = swin_unetr()
    decoder_before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith(ENCODER)}
    report = load_pretrained(net, "test_voco", weights_cache=tmp_path / "cache")
    assert_encoder_equals(net, source)
    assert report.encoder_fraction == 1.0 and report.loaded == sorted(source)
    counts = {block: sum(k.startswith(f"{block}.") for k in source) for block in SWIN_ENCODER_BLOCKS}
    assert report.blocks == {block: (n, n) for block, n in counts.items()} and counts["encoder1"] == 3
    assert "swinViT 134/134, encoder1 3/3, encoder2 2/2, encoder3 2/2, encoder4 2/2, encoder10 2/2" in report.summary()
    assert report.unexpected == ([] if layout.endswith("(flat)") else HEAD_KEYS)  # the heads keep their names
    assert not report.skipped and not report.shape_mismatched
    assert report.missing == sorted(decoder_before)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in decoder_before.items())


@pytest.mark.parametrize("wrapped", [False, True])
def test_vocomni_loads_its_encoder_and_reports_the_supervised_decoder_as_skipped(tmp_path, server, registered, wrapped):
    full = swin_unetr(out_channels=21, seed=5).state_dict()  # the published 21-class network
    served = serve(server, "VoComni_T.pt", {"state_dict": full, "epoch": 3} if wrapped else full)
    add(registered, entry(server, served.name, name="test_vocomni"))
    net = swin_unetr(out_channels=3)
    decoder_before = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith(ENCODER)}
    report = load_pretrained(net, "test_vocomni", weights_cache=tmp_path)
    assert_encoder_equals(net, {k: v for k, v in full.items() if k.startswith(ENCODER)})
    assert report.skipped == sorted(k for k in full if not k.startswith(ENCODER))  # decoder1..5 and out (21 classes)
    assert any(k.startswith("decoder5.") for k in report.skipped) and "out.conv.conv.weight" in report.skipped
    assert not report.unexpected and not report.shape_mismatched and report.encoder_fraction == 1.0
    assert all(torch.equal(net.state_dict()[k], v) for k, v in decoder_before.items())


def test_the_swinunetr_ssl_layout_fills_the_swin_transformer_as_monai_load_from_does(tmp_path, server, registered):
    source = swin_unetr(use_v2=False, seed=9).state_dict()
    layout = swinvit_ssl_layout(source)
    assert "module.layers1.0.blocks.0.mlp.fc1.weight" in layout and "module.patch_embed.proj.weight" in layout
    served = serve(server, "model_swinvit.pt", {"epoch": 100, "state_dict": {**layout, **SSL_HEADS}})
    add(registered, entry(server, served.name, name="test_swin_ssl", use_v2=False, blocks=("swinViT",)))
    net = swin_unetr(use_v2=False)
    report = load_pretrained(net, "test_swin_ssl", weights_cache=tmp_path)
    reference = swin_unetr(use_v2=False)
    reference.load_from(torch.load(served, weights_only=True))  # MONAI's own reader of this layout
    state, expected = net.state_dict(), reference.state_dict()
    swin = [k for k in state if k.startswith("swinViT.")]
    assert len(swin) == 126 and all(torch.equal(state[k], expected[k]) for k in swin)
    assert all(torch.equal(state[k], source[k]) for k in swin)
    assert report.unexpected == sorted(k.removeprefix("module.") for k in SSL_HEADS)
    assert report.blocks["swinViT"] == (126, 126) and report.blocks["encoder1"] == (0, 3)
    assert report.encoder_fraction == 1.0 and not report.skipped


# ---------------------------------------------------------------- the bundles


@pytest.fixture
def voco_t(server, registered, tmp_path) -> tuple[dict[str, torch.Tensor], Path]:
    """A registered ``test_voco`` (feature_size 12, use_v2, window 4) served in the flat published layout,
    and the registry file that makes it known to other processes."""
    source = encoder_state()
    served = serve(server, "VoCo_T_SSL_head.pt", source)
    weights = add(registered, entry(server, served.name, hash_val=sha256(served)))
    registry = tmp_path / "registry.json"
    registry.write_text(json.dumps([{**dataclasses.asdict(weights), "blocks": list(weights.blocks)}]))
    return source, registry


BTCV_TINY = {
    "dataset_dir": str(DEMO_DIR),
    "datalist": str(DEMO_ORGANS_DATALIST),
    "feature_size": FS,
    "window_size": WINDOW,
    "use_v2": True,
    "num_workers": 0,
}


def test_btcv_seg_fine_tunes_from_a_name(tmp_path, server, voco_t):
    source, _ = voco_t
    cache = tmp_path / "cache"
    settings = {**BTCV_TINY, "bundle_root": str(tmp_path), "pretrained": "test_voco", "weights_cache": str(cache)}
    wf = bundle_workflow("voco_btcv_seg", **settings)
    assert_encoder_equals(wf.parser.get_parsed_content("network_def"), source)
    _, report = wf.initialize()  # again: the file now comes from the cache
    assert report.encoder_fraction == 1.0 and report.blocks["encoder10"] == (2, 2)
    assert server.count("VoCo_T_SSL_head.pt") == 1 and (cache / "VoCo_T_SSL_head.pt").is_file()


def test_covid_cls_fine_tunes_from_a_name(tmp_path, voco_t):
    source, _ = voco_t
    settings = {"bundle_root": str(tmp_path), "feature_size": FS, "window_size": WINDOW, "use_v2": True}
    wf = bundle_workflow("voco_covid_cls", pretrained="test_voco", weights_cache=str(tmp_path / "c"), **settings)
    _, report = wf.initialize()
    state = wf.parser.get_parsed_content("network_def").state_dict()
    swin = {k: v for k, v in source.items() if k.startswith("swinViT.")}
    assert all(torch.equal(state[k], v) for k, v in swin.items()) and report.blocks == {"swinViT": (134, 134)}
    assert report.unexpected == sorted(k for k in source if not k.startswith("swinViT."))  # no encoder1..10 here


def test_a_bundle_of_other_settings_stops_with_the_mismatch(tmp_path, server, voco_t):
    settings = {**BTCV_TINY, "bundle_root": str(tmp_path), "pretrained": "test_voco", "use_v2": False}
    with pytest.raises(RuntimeError) as info:
        bundle_workflow("voco_btcv_seg", weights_cache=str(tmp_path / "cache"), **settings)
    assert "the network has use_v2 false" in str(first_in_chain(info.value, ValueError))
    assert server.count("VoCo_T_SSL_head.pt") == 0


def test_the_command_line_stops_a_name_with_another_feature_size(tmp_path, server, voco_t, monkeypatch):
    _, registry = voco_t
    monkeypatch.setenv(WEIGHTS_REGISTRY_ENV, str(registry))
    overrides = {**BTCV_TINY, "bundle_root": str(tmp_path), "pretrained": "test_voco", "feature_size": 24}
    result = run_bundle_cli("voco_btcv_seg", ["train.json"], {**overrides, "weights_cache": str(tmp_path / "cache")})
    assert result.returncode != 0
    assert "the network has feature_size 24" in result.stderr and "configs/pretrained/test_voco.json" in result.stderr
    assert server.count("VoCo_T_SSL_head.pt") == 0


@pytest.mark.slow
def test_the_command_line_trains_from_a_name(tmp_path, server, voco_t, monkeypatch):
    _, registry = voco_t
    monkeypatch.setenv(WEIGHTS_REGISTRY_ENV, str(registry))
    cache = tmp_path / "cache"
    overrides = {"bundle_root": str(tmp_path), "pretrained": "test_voco", "use_v2": True, "weights_cache": str(cache)}
    result = run_bundle_cli("voco_btcv_seg", ["train.json", "cpu_demo.json"], {**overrides, "max_steps": 1})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"test_voco ({cache / 'VoCo_T_SSL_head.pt'}): loaded 145 tensors (100.0% of the encoder)" in result.stdout
    assert server.count("VoCo_T_SSL_head.pt") == 1
    assert json.loads((tmp_path / "models" / "model.json").read_text())["pretrained"] == "test_voco"


@pytest.mark.parametrize("bundle", ["voco_btcv_seg", "voco_covid_cls"])
def test_each_published_name_has_an_overlay_with_its_settings(bundle):
    folder = BUNDLES / bundle / "configs" / "pretrained"
    assert sorted(p.stem for p in folder.glob("*.json")) == sorted(PRETRAINED_WEIGHTS)
    for name, weights in PRETRAINED_WEIGHTS.items():
        text = (folder / f"{name}.json").read_text()
        assert json.loads(text) == {"pretrained": name, **weights.architecture}
        assert text == json.dumps(json.loads(text), indent=4) + "\n"


@pytest.mark.parametrize("bundle", ["voco_btcv_seg", "voco_covid_cls"])
def test_the_full_size_overlay_builds_the_network_the_name_needs(bundle):
    wf = bundle_workflow(bundle, ["train.json", "pretrained/voco_b.json"], initialize=False)
    assert wf.parser.get_parsed_content("pretrained") == "voco_b"
    network = wf.parser.get_parsed_content("network_def")
    assert check_architecture("voco_b", **swin_architecture(network)).name == "voco_b"  # the download would go ahead


# ---------------------------------------------------------------- the label-efficiency protocol


def test_protocol_inits_take_a_name(tmp_path, server, voco_t, monkeypatch):
    monkeypatch.chdir(BUNDLES.parent)
    protocol = label_efficiency.load_protocol(
        BUNDLES / "voco_covid_cls" / "configs" / "label_efficiency" / "cpu_demo_protocol.json",
        {"voco": "test_voco"},
    )
    protocol.overrides.update(weights_cache=str(tmp_path / "cache"), feature_size=FS, window_size=WINDOW, use_v2=True)
    inits = label_efficiency.resolve_inits(protocol)
    cached = tmp_path / "cache" / "VoCo_T_SSL_head.pt"
    assert inits["voco"] == {"path": str(cached), "sha256": sha256(cached), "pretrained": "test_voco"}
    assert inits["scratch"] == {"path": None, "sha256": None, "pretrained": None}
    protocol.overrides["feature_size"] = 24
    with pytest.raises(ValueError, match="init 'voco'.*the network has feature_size 24"):
        label_efficiency.resolve_inits(protocol)
    assert server.count("VoCo_T_SSL_head.pt") == 1
