"""Tests of voco_components.networks.attention: the SDPA window attention computes MONAI's function with MONAI's
tensors."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import SwinUNETR
from monai.networks.nets.swin_unetr import BasicLayer, WindowAttention, compute_mask

from voco_components.networks.attention import (
    MaskCachingBasicLayer,
    SDPAWindowAttention,
    set_window_attention,
    shifted_window_mask,
    swin_unetr,
    window_attention,
)
from voco_components.networks.encoders import SwinEncoder


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-30))


def _randomise(module: torch.nn.Module, seed: int) -> None:
    """Random weights everywhere, the relative position bias tables included (MONAI starts them near 0)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            scale = 1.0 if "norm" in name and name.endswith("weight") else 0.0  # layer norms near 1
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2 + scale)


def _hidden_and_grads(encoder: SwinEncoder, x: torch.Tensor) -> tuple[list[torch.Tensor], dict[str, torch.Tensor]]:
    """The five hidden states and every parameter gradient of a random linear function of them."""
    encoder.zero_grad(set_to_none=True)
    hidden = encoder.swinViT(x, encoder.normalize)
    loss = sum((h * _randn(*h.shape, seed=10 + i)).sum() for i, h in enumerate(hidden))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in encoder.named_parameters() if p.grad is not None}
    return [h.detach() for h in hidden], grads


@pytest.mark.parametrize(
    "dims, window, shift",
    [
        ((8, 8, 8), (4, 4, 4), (2, 2, 2)),
        ((14, 21, 7), (7, 7, 7), (3, 3, 3)),
        ((12, 8, 4), (4, 4, 4), (2, 2, 0)),  # an axis without a shift
        ((8, 12), (4, 4), (2, 2)),  # 2D
    ],
)
def test_shifted_window_mask_equals_monai_compute_mask(dims, window, shift):
    ours = shifted_window_mask(dims, window, shift)
    theirs = compute_mask(list(dims), window, shift, "cpu")
    assert ours.shape == theirs.shape
    assert torch.equal(ours, theirs)
    assert set(ours.unique().tolist()) <= {0.0, -100.0}


@pytest.mark.parametrize(
    "feature_size, window, depths, shape",
    [
        (12, 4, (2, 2, 2, 2), (2, 1, 40, 32, 24)),  # stage 2 (10x8x6) pads to 12x8x8
        (12, 7, (2, 2, 2, 2), (1, 1, 32, 32, 32)),  # stage 1 (16^3) pads to 21^3, later stages shrink the window
        (48, 7, (2, 2, 1, 1), (1, 1, 32, 32, 32)),  # the paper's width, tiny depth
        (12, 7, (2, 2, 2, 2), (2, 1, 96, 64)),  # 2D (radiographs): stage 1 (48x32) pads to 49x35
        (12, 4, (2, 2, 2, 2), (1, 1, 64, 64)),
    ],
)
def test_sdpa_encoder_matches_monai_attention(feature_size, window, depths, shape):
    """Same hidden states and parameter gradients (float32, relative L2 <= 1e-5), with gradients and without,
    for volumes and for 2D images."""
    heads = (3, 6, 12, 24)
    torch.manual_seed(0)
    encoder = SwinEncoder(
        feature_size=feature_size, window_size=window, depths=depths, num_heads=heads, spatial_dims=len(shape) - 2
    )
    _randomise(encoder, seed=1)
    x = _randn(*shape, seed=2)
    set_window_attention(encoder, "monai")
    ref_hidden, ref_grads = _hidden_and_grads(encoder, x)
    with torch.no_grad():
        ref_pooled = encoder(x)
    set_window_attention(encoder, "sdpa")
    hidden, grads = _hidden_and_grads(encoder, x)
    with torch.no_grad():  # the no-grad path runs scaled_dot_product_attention on CPU as well
        pooled = encoder(x)
    assert isinstance(encoder.swinViT.layers1[0].blocks[1].attn, SDPAWindowAttention)
    assert encoder.swinViT.layers1[0].window_masks, "the shifted blocks used a cached mask"
    for a, b in zip(hidden, ref_hidden, strict=True):
        assert _rel(a, b) <= 1e-5
    assert _rel(pooled, ref_pooled) <= 1e-5
    assert grads.keys() == ref_grads.keys() and len(grads) > 20
    for name, grad in grads.items():
        assert _rel(grad, ref_grads[name]) <= 1e-5, name
    assert ref_grads["swinViT.layers1.0.blocks.1.attn.relative_position_bias_table"].abs().sum() > 0


def test_window_attention_sdpa_branch_matches_explicit_product():
    """With a mask that takes no gradient, window_attention runs SDPA (flash on CPU) in training too."""
    q, k, v = (_randn(2, 6, 64, 8, seed=s).requires_grad_() for s in (1, 2, 3))
    mask = _randn(1, 6, 64, 64, seed=4)
    out = window_attention(q, k, v, mask, scale=0.3)
    out.backward(_randn(*out.shape, seed=5))
    got = [t.grad.clone() for t in (q, k, v)]
    for t in (q, k, v):
        t.grad = None
    ref = torch.softmax(0.3 * q @ k.transpose(-1, -2) + mask, dim=-1) @ v
    ref.backward(_randn(*out.shape, seed=5))
    assert _rel(out.detach(), ref.detach()) <= 1e-5
    for a, t in zip(got, (q, k, v), strict=True):
        assert _rel(a, t.grad) <= 1e-5


def test_state_dict_round_trips_into_monai_swinunetr():
    torch.manual_seed(0)
    encoder = SwinEncoder(feature_size=12, window_size=4)
    full = SwinUNETR(in_channels=1, out_channels=2, feature_size=12, window_size=4)
    ours = {k.removeprefix("swinViT."): v for k, v in encoder.state_dict().items()}
    full.swinViT.load_state_dict(ours, strict=True)
    _randomise(full.swinViT, seed=3)
    encoder.swinViT.load_state_dict(full.swinViT.state_dict(), strict=True)
    for key, value in full.swinViT.state_dict().items():
        assert torch.equal(encoder.swinViT.state_dict()[key], value), key
    x = _randn(1, 1, 32, 32, 32, seed=4)
    with torch.no_grad():
        assert _rel(encoder.swinViT(x)[4], full.swinViT(x)[4]) <= 1e-5


def test_set_window_attention_switches_classes_only():
    net = swin_unetr(in_channels=1, out_channels=2, feature_size=12, window_size=4)
    keys = {k: v.clone() for k, v in net.state_dict().items()}
    kinds = {type(m) for m in net.modules()}
    assert SDPAWindowAttention in kinds and MaskCachingBasicLayer in kinds and WindowAttention not in kinds
    set_window_attention(net, "monai")
    kinds = {type(m) for m in net.modules()}
    assert WindowAttention in kinds and BasicLayer in kinds and SDPAWindowAttention not in kinds
    assert net.state_dict().keys() == keys.keys()
    assert all(torch.equal(net.state_dict()[k], v) for k, v in keys.items())
    with pytest.raises(ValueError, match="attention must be one of"):
        set_window_attention(net, "flash")


def test_mask_cache_returns_the_mask_of_each_new_shape():
    torch.manual_seed(0)
    encoder = SwinEncoder(feature_size=12, window_size=4, depths=(2, 2, 2, 2))
    stage = encoder.swinViT.layers1[0]
    with torch.no_grad():
        for shape in ((16, 16, 16), (32, 16, 16), (24, 16, 40), (16, 16, 16)):
            encoder.swinViT(_randn(1, 1, *shape, seed=0))
    # stage 1 sees the patch-embedded grid (half the input); 24x16x40 -> 12x8x20, divisible by 4: no padding
    assert len(stage.window_masks) == 3
    for (dims, window, shift, device), mask in stage.window_masks.items():
        assert torch.equal(mask, compute_mask(list(dims), window, shift, device))
    assert {key[0] for key in stage.window_masks} == {(8, 8, 8), (16, 8, 8), (12, 8, 20)}


def test_bf16_autocast_gives_finite_losses():
    from voco_components.engines.workflow import VoCoCriterion
    from voco_components.networks.voco_net import VoCoNet

    torch.manual_seed(0)
    net = VoCoNet(SwinEncoder(feature_size=12, window_size=4), hidden_dim=32, out_dim=16)
    criterion = VoCoCriterion("paper")
    crops = _randn(2 * 6, 1, 16, 16, 16, seed=1)
    labels = torch.softmax(_randn(2, 2, 4, seed=2), dim=-1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = net(crops)
        loss = criterion(features, labels)
    assert features.dtype == torch.bfloat16 and loss.dtype == torch.float32
    assert torch.isfinite(loss) and all(torch.isfinite(t) for t in criterion.terms.values())
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
