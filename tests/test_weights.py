"""voco_components.networks.weights: checkpoint layouts, renames, channel adaptation and the load report."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import SwinUNETR

from voco_components.networks.encoders import SwinEncoder
from voco_components.networks.weights import adapt_input_channels, load_pretrained, normalise_state_dict

FS = 12


@pytest.fixture(scope="module")
def encoder_state() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    return SwinEncoder(feature_size=FS, window_size=4, multiscale=True).state_dict()


def swin(in_channels: int = 1) -> SwinUNETR:
    torch.manual_seed(1)
    return SwinUNETR(in_channels=in_channels, out_channels=3, feature_size=FS, window_size=4)


LAYOUTS = {
    "plain export": lambda s: dict(s),
    "state_dict + module.": lambda s: {"state_dict": {f"module.{k}": v for k, v in s.items()}},
    "model + swin_vit": lambda s: {"model": {k.replace("swinViT", "swin_vit"): v for k, v in s.items()}},
    "net + backbone.": lambda s: {"net": {f"backbone.{k}": v for k, v in s.items()}},
    "student entry": lambda s: {"student": dict(s), "epoch": 3},
    "student/teacher pair": lambda s: {
        "state_dict": {
            **{f"module.student.{k}": v for k, v in s.items()},
            **{f"module.teacher.{k}": torch.zeros_like(v) for k, v in s.items()},
        }
    },
    "teacher only": lambda s: {f"teacher.{k}": v for k, v in s.items()},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_loads_the_encoder_with_equal_values(tmp_path, encoder_state, layout):
    path = tmp_path / "ckpt.pt"
    torch.save(LAYOUTS[layout](encoder_state), path)
    net = swin()
    report = load_pretrained(net, path)
    assert report.encoder_fraction == 1.0 and not report.unexpected and not report.shape_mismatched
    assert report.loaded == sorted(encoder_state)
    loaded = net.state_dict()
    for key, value in encoder_state.items():
        assert torch.equal(loaded[key], value), key  # the student's values, never the zero teacher's
    assert all(k.startswith(("decoder", "out.")) for k in report.missing)


def test_normalise_keeps_only_tensors_and_strips_nested_prefixes():
    t = torch.ones(1)
    state = normalise_state_dict({"state_dict": {"module.backbone.swin_vit.a": t, "step": 5, "module.b": t}})
    assert state == {"swinViT.a": t, "b": t}


def test_a_checkpoint_that_matches_nothing_is_refused(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"conv.weight": torch.zeros(3, 3)}, path)
    with pytest.raises(ValueError, match=r"0\.0% of the encoder"):
        load_pretrained(swin(), path)


def test_a_checkpoint_of_another_size_is_refused(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "fs24.pt"
    torch.save(SwinEncoder(feature_size=24, window_size=4).state_dict(), path)
    with pytest.raises(ValueError, match="below the required 90%"):
        load_pretrained(swin(), path)


def test_partial_loads_pass_under_a_lower_threshold(tmp_path, encoder_state):
    half = dict(list(encoder_state.items())[: len(encoder_state) // 2])
    path = tmp_path / "half.pt"
    torch.save(half, path)
    with pytest.raises(ValueError):
        load_pretrained(swin(), path)
    report = load_pretrained(swin(), path, min_encoder_fraction=0.2)
    swin_keys = [k for k in swin().state_dict() if k.startswith("swinViT.")]
    assert report.encoder_fraction == pytest.approx(sum(k in half for k in swin_keys) / len(swin_keys))


def test_none_means_from_scratch_and_missing_file_is_an_error(tmp_path):
    net = swin()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    assert load_pretrained(net, None) is None
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_pretrained(net, tmp_path / "nope.pt")


def test_repeat_policy_preserves_the_response_to_a_repeated_input():
    """Tiling C_in filters over 4 channels and scaling by 1/4 keeps conv(x repeated 4x) == conv(x)."""
    weight = torch.randn(6, 1, 2, 2, 2)
    adapted = adapt_input_channels(weight, 4, "repeat")
    assert adapted.shape == (6, 4, 2, 2, 2)
    x = torch.randn(1, 1, 4, 4, 4)
    torch.testing.assert_close(
        torch.nn.functional.conv3d(x.repeat(1, 4, 1, 1, 1), adapted), torch.nn.functional.conv3d(x, weight)
    )
    assert adapt_input_channels(weight, 4, "reinit") is None
    with pytest.raises(ValueError, match="policy"):
        adapt_input_channels(weight, 4, "zero")


@pytest.mark.parametrize("policy", ["repeat", "reinit"])
def test_four_channel_mri_from_a_ct_checkpoint(tmp_path, encoder_state, policy):
    path = tmp_path / "ct.pt"
    torch.save(encoder_state, path)
    net = swin(in_channels=4)
    initial = {k: v.clone() for k, v in net.state_dict().items()}
    report = load_pretrained(net, path, in_channels_policy=policy)
    first_layers = {
        "swinViT.patch_embed.proj.weight",
        "encoder1.layer.conv1.conv.weight",
        "encoder1.layer.conv3.conv.weight",
    }
    state = net.state_dict()
    if policy == "repeat":
        assert set(report.channel_adapted) == first_layers and not report.shape_mismatched
        w = encoder_state["swinViT.patch_embed.proj.weight"]
        torch.testing.assert_close(state["swinViT.patch_embed.proj.weight"], w.repeat(1, 4, 1, 1, 1) / 4)
    else:
        assert set(report.shape_mismatched) == first_layers and not report.channel_adapted
        assert torch.equal(state["swinViT.patch_embed.proj.weight"], initial["swinViT.patch_embed.proj.weight"])
    assert torch.equal(
        state["swinViT.layers1.0.blocks.0.attn.qkv.weight"], encoder_state["swinViT.layers1.0.blocks.0.attn.qkv.weight"]
    )


def test_normalise_keeps_the_authors_projection_heads_apart_from_the_backbone():
    """VoCoHead: ``backbone.*`` beside ``student.*``/``teacher.*`` heads; the heads keep their names (and the teacher
    head is not mistaken for the teacher half of a pair), the backbone loses its prefix."""
    t = torch.ones(1)
    state = {
        "backbone.swinViT.a": t,
        "backbone.encoder1.b": t,
        "student.layer1.0.weight": t,
        "teacher.layer1.0.weight": t,
    }
    assert set(normalise_state_dict({"network_weights": {f"module.{k}": v for k, v in state.items()}})) == {
        "swinViT.a",
        "encoder1.b",
        "student.layer1.0.weight",
        "teacher.layer1.0.weight",
    }


def test_a_swin_transformer_saved_alone_loads_by_path(tmp_path):
    """SwinUNETR's self-supervised layout: ``module.`` + the SwinTransformer's names with ``mlp.fc1``/``fc2``."""
    torch.manual_seed(2)
    source = {k: v for k, v in swin().state_dict().items() if k.startswith("swinViT.")}
    layout = {
        "module."
        + k.removeprefix("swinViT.").replace(".mlp.linear1.", ".mlp.fc1.").replace(".mlp.linear2.", ".mlp.fc2."): v
        for k, v in source.items()
    }
    assert any(".mlp.fc2." in k for k in layout)
    path = tmp_path / "model_swinvit.pt"
    torch.save({"state_dict": {**layout, "module.rotation_head.weight": torch.ones(4, 2)}}, path)
    net = swin()
    report = load_pretrained(net, path)
    assert report.encoder_fraction == 1.0 and report.unexpected == ["rotation_head.weight"]
    assert all(torch.equal(net.state_dict()[k], v) for k, v in source.items())
