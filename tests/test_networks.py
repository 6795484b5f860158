"""Tests of voco_components.networks: checkpoint compatibility with MONAI's SwinUNETR / BasicUNet and torchvision's
ResNet-18 layout, pooled embeddings, the projector and the EMA student/teacher pair."""

from __future__ import annotations

import pytest
import torch
from monai.networks.nets import BasicUNet, ResNet, SwinUNETR
from torch import nn

from voco_components.networks.encoders import (
    ResNet18Classifier,
    ResNet18Encoder,
    SwinClassifier,
    SwinEncoder,
    UNetEncoder,
)
from voco_components.networks.voco_net import ProjectionHead, VoCoNet, VoCoTeacherStudent
from voco_components.networks.weights import load_pretrained

FS = 12  # tiny Swin: feature_size 12, window 4
UNET_FEATURES = (4, 4, 8, 8, 16, 4)


def _randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def _check_loads(encoder: nn.Module, full: nn.Module) -> list[str]:
    """Load encoder weights into ``full``; check no unexpected key and equal shapes; return the missing keys."""
    enc_state, full_state = encoder.state_dict(), full.state_dict()
    for key, value in enc_state.items():
        assert key in full_state, key
        assert full_state[key].shape == value.shape, key
    result = full.load_state_dict(enc_state, strict=False)
    assert result.unexpected_keys == []
    for key, value in enc_state.items():  # the weights really arrived
        assert torch.equal(full.state_dict()[key], value), key
    return list(result.missing_keys)


# MONAI's own attention, so that the outputs can be compared bit for bit with SwinUNETR's; the SDPA attention
# (the default) is compared with it in tests/test_attention.py
@pytest.fixture(scope="module")
def swin_pair():
    torch.manual_seed(0)
    encoder = SwinEncoder(feature_size=FS, window_size=4, attention="monai").eval()
    torch.manual_seed(1)
    full = SwinUNETR(in_channels=1, out_channels=14, feature_size=FS, window_size=4).eval()
    return encoder, full


@pytest.fixture(scope="module")
def multiscale_pair():
    torch.manual_seed(2)
    encoder = SwinEncoder(feature_size=FS, window_size=4, multiscale=True, attention="monai").eval()
    torch.manual_seed(3)
    full = SwinUNETR(in_channels=1, out_channels=14, feature_size=FS, window_size=4).eval()
    return encoder, full


def test_swin_encoder_state_dict_loads_into_swinunetr(swin_pair):
    encoder, full = swin_pair
    x = _randn(1, 1, 32, 32, 32, seed=4)
    with torch.no_grad():
        before = full.swinViT(x, full.normalize)
    missing = _check_loads(encoder, full)
    # only SwinUNETR's convolutional encoders/decoders and head are not in the last-stage encoder
    assert missing and all(k.split(".")[0] not in {"swinViT"} for k in missing)
    assert all(k.startswith("swinViT.") for k in encoder.state_dict())
    with torch.no_grad():
        mine = encoder.swinViT(x, encoder.normalize)
        theirs = full.swinViT(x, full.normalize)
        out = encoder.feature_maps(x)
        pooled = encoder(x)
    assert not torch.allclose(before[4], theirs[4])  # the load changed SwinUNETR (different random init)
    assert len(mine) == len(theirs) == 5
    for a, b in zip(mine, theirs, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(out) == 1
    torch.testing.assert_close(out[0], theirs[4], rtol=0, atol=0)
    assert out[0].shape == (1, 16 * FS, 1, 1, 1)
    torch.testing.assert_close(pooled, theirs[4].flatten(1))


def test_multiscale_state_dict_loads_into_swinunetr(multiscale_pair):
    encoder, full = multiscale_pair
    missing = _check_loads(encoder, full)
    prefixes = {k.split(".")[0] for k in encoder.state_dict()}
    assert prefixes == {"swinViT", "encoder1", "encoder2", "encoder3", "encoder4", "encoder10"}
    assert all(k.split(".")[0].startswith(("decoder", "out")) for k in missing), missing
    x = _randn(1, 1, 32, 32, 32, seed=5)
    with torch.no_grad():
        for a, b in zip(encoder.swinViT(x, encoder.normalize), full.swinViT(x, full.normalize), strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_multiscale_levels_and_embedding_match_swinunetr_blocks(multiscale_pair):
    """At 64x64x32 (instance norm needs more than one voxel on the deepest level): the five levels equal
    SwinUNETR's encoder1/2/3/4/10 on hidden states 0, 1, 2 and 4, and the encoder's pooled embedding is their
    concatenated spatial means (24 * feature_size)."""
    encoder, full = multiscale_pair
    _check_loads(encoder, full)
    x = _randn(1, 1, 64, 64, 32, seed=6)  # deepest level 2x2x1
    with torch.no_grad():
        hidden = full.swinViT(x, full.normalize)
        ref_levels = [
            full.encoder1(x),
            full.encoder2(hidden[0]),
            full.encoder3(hidden[1]),
            full.encoder4(hidden[2]),
            full.encoder10(hidden[4]),
        ]
        levels = encoder.feature_maps(x)
        embedding = encoder(x)
    assert len(levels) == 5
    for a, b in zip(levels, ref_levels, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert [lvl.shape[1] for lvl in ref_levels] == [FS, FS, 2 * FS, 4 * FS, 16 * FS]
    ref_embedding = torch.cat([lvl.mean(dim=(2, 3, 4)) for lvl in ref_levels], dim=1)
    assert embedding.shape == (1, 24 * FS) == (1, encoder.out_channels)
    torch.testing.assert_close(embedding, ref_embedding, rtol=1e-5, atol=1e-6)


def test_last_stage_embedding_is_pooled_last_hidden_state(swin_pair):
    encoder, _ = swin_pair
    x = _randn(1, 1, 64, 32, 32, seed=7)  # 2x1x1 deepest map, so the pooling really averages
    with torch.no_grad():
        last = encoder.swinViT(x, encoder.normalize)[4]
        maps = encoder.feature_maps(x)
        embedding = encoder(x)
    assert last.shape == (1, 16 * FS, 2, 1, 1)
    torch.testing.assert_close(maps[0], last, rtol=0, atol=0)
    manual = torch.stack([(last[0, c, 0, 0, 0] + last[0, c, 1, 0, 0]) / 2 for c in range(last.shape[1])])[None]
    assert embedding.shape == (1, 16 * FS) == (1, encoder.out_channels)
    torch.testing.assert_close(embedding, manual, rtol=1e-5, atol=1e-6)


def test_voconet_output_shape_and_projector(swin_pair):
    encoder, _ = swin_pair
    net = VoCoNet(encoder, hidden_dim=32, out_dim=24).train()
    x = _randn(3, 1, 32, 32, 32, seed=8)
    out = net(x)
    assert out.shape == (3, 24)
    with torch.no_grad():
        manual = net.projector(net.encoder(x))
    torch.testing.assert_close(out.detach(), manual)
    net.eval()


def test_swin_v2_and_checkpoint_construct_and_run():
    options = {"use_v2": True, "use_checkpoint": True}
    torch.manual_seed(0)
    encoder = SwinEncoder(feature_size=FS, window_size=4, **options).train()
    assert encoder.swinViT.use_v2 and encoder.swinViT.layers1[0].blocks[0].use_checkpoint
    assert any(".layers1c." in k for k in encoder.state_dict())  # the v2 residual blocks are there
    x = _randn(1, 1, 32, 32, 32, seed=9)
    out = encoder(x)
    assert out.shape == (1, 16 * FS)
    out.square().sum().backward()
    grads = [p.grad for p in encoder.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert encoder.swinViT.patch_embed.proj.weight.grad.abs().sum() > 0
    full = SwinUNETR(in_channels=1, out_channels=14, feature_size=FS, window_size=4, **options)
    _check_loads(encoder, full)


def test_unet_encoder_loads_into_basicunet():
    torch.manual_seed(0)
    for multiscale in (False, True):
        encoder = UNetEncoder(features=UNET_FEATURES, multiscale=multiscale).eval()
        torch.manual_seed(1)
        full = BasicUNet(spatial_dims=3, in_channels=1, out_channels=2, features=UNET_FEATURES).eval()
        missing = _check_loads(encoder, full)
        assert all(k.split(".")[0] in {"upcat_4", "upcat_3", "upcat_2", "upcat_1", "final_conv"} for k in missing)
        x = _randn(1, 1, 32, 32, 32, seed=10)
        with torch.no_grad():
            levels = encoder.feature_maps(x)
            ref = [full.conv_0(x)]
            for down in (full.down_1, full.down_2, full.down_3, full.down_4):
                ref.append(down(ref[-1]))
        expected = ref if multiscale else ref[-1:]
        assert len(levels) == len(expected)
        for a, b in zip(levels, expected, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert encoder.out_channels == (sum(UNET_FEATURES[:5]) if multiscale else UNET_FEATURES[4])
        with torch.no_grad():
            embed = encoder(x)
        assert embed.shape == (1, encoder.out_channels)
        torch.testing.assert_close(embed, torch.cat([lvl.mean(dim=(2, 3, 4)) for lvl in expected], dim=1))


def test_projection_head_structure():
    head = ProjectionHead(in_dim=10, hidden_dim=7, out_dim=5)
    layers = list(head.layers)
    assert [type(m) for m in layers] == [
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Linear,
        nn.BatchNorm1d,
        nn.ReLU,
        nn.Linear,
    ]
    assert (layers[0].in_features, layers[0].out_features) == (10, 7)
    assert layers[1].num_features == 7 and layers[4].num_features == 7
    assert (layers[3].in_features, layers[3].out_features) == (7, 7)
    assert (layers[6].in_features, layers[6].out_features) == (7, 5)
    # batch statistics over all rows of the step (train mode): manual forward
    x = _randn(6, 10, seed=11)
    head.train()
    h = x
    for lin, bn in ((layers[0], layers[1]), (layers[3], layers[4])):
        h = lin(h)
        h = (h - h.mean(0)) / torch.sqrt(h.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
        h = torch.relu(h)
    manual = layers[6](h)
    torch.testing.assert_close(head(x), manual, rtol=1e-5, atol=1e-5)
    # evaluation normalises with the statistics of the batch too, as in training (author-code BN)
    head.eval()
    torch.testing.assert_close(head(x), manual, rtol=1e-5, atol=1e-5)
    assert not any("running" in k for k in head.state_dict())


def test_projection_head_with_running_statistics_evaluates_with_them():
    head = ProjectionHead(in_dim=10, hidden_dim=7, out_dim=5, batch_stats=False).train()
    x = _randn(6, 10, seed=13)
    head(x)  # one training step updates the running statistics
    bn = head.layers[1]
    h = head.layers[0](x)
    torch.testing.assert_close(bn.running_mean, 0.1 * h.mean(0).detach(), rtol=1e-5, atol=1e-6)
    head.eval()
    single = head(x[:1])  # a single row evaluates: no batch statistics are needed
    h = x[:1]
    for lin, norm in ((head.layers[0], head.layers[1]), (head.layers[3], head.layers[4])):
        h = lin(h)
        h = (h - norm.running_mean) / torch.sqrt(norm.running_var + norm.eps) * norm.weight + norm.bias
        h = torch.relu(h)
    torch.testing.assert_close(single, head.layers[6](h), rtol=1e-5, atol=1e-5)


def _tiny_unet_net(seed: int = 0) -> VoCoNet:
    torch.manual_seed(seed)
    return VoCoNet(UNetEncoder(features=UNET_FEATURES), hidden_dim=8, out_dim=6)


def test_teacher_student_output_and_frozen_teacher():
    pair = VoCoTeacherStudent(_tiny_unet_net()).train()
    for s, t in zip(pair.student.state_dict().values(), pair.teacher.state_dict().values(), strict=True):
        assert torch.equal(s, t)  # the teacher starts as a copy
    assert all(not p.requires_grad for p in pair.teacher.parameters())
    assert all(p.requires_grad for p in pair.student.parameters())
    x = _randn(4, 1, 32, 32, 32, seed=12)
    out = pair(x)
    assert out.shape == (2, 4, 6)
    assert pair.teacher.training  # follows the student's mode
    # perturb the teacher; the second slice must then be the teacher's own forward
    with torch.no_grad():
        for p in pair.teacher.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = pair(x)
    with torch.no_grad():
        ref_student = pair.student(x)
        ref_teacher = pair.teacher(x)
    torch.testing.assert_close(out[0].detach(), ref_student)
    torch.testing.assert_close(out[1], ref_teacher)
    assert not torch.allclose(out[0].detach(), out[1])
    out.square().sum().backward()
    assert all(p.grad is None for p in pair.teacher.parameters())
    assert all(p.grad is not None for p in pair.student.parameters())
    assert pair.student.projector.layers[0].weight.grad.abs().sum() > 0
    pair.eval()
    pair(x[:2])
    assert not pair.teacher.training


@pytest.mark.parametrize("momentum", [0.9, 0.0, 0.5])
def test_update_teacher_is_ema(momentum):
    net = _tiny_unet_net()
    net.encoder.register_buffer("stat", torch.zeros(3))  # a float buffer (EMA) and an integer one (copied)
    net.encoder.register_buffer("count", torch.zeros((), dtype=torch.long))
    pair = VoCoTeacherStudent(net).train()
    gen = torch.Generator().manual_seed(13)
    with torch.no_grad():
        for p in pair.student.parameters():
            p.add_(torch.randn(p.shape, generator=gen))
        for p in pair.teacher.parameters():
            p.add_(torch.randn(p.shape, generator=gen))
        pair.student.encoder.stat.add_(torch.randn(3, generator=gen))
        pair.student.encoder.count.add_(7)
    old_teacher = {k: v.clone() for k, v in pair.teacher.state_dict().items()}
    student = {k: v.clone() for k, v in pair.student.state_dict().items()}
    pair.update_teacher(momentum)
    new_teacher = pair.teacher.state_dict()
    checked = 0
    for key, old in old_teacher.items():
        if old.is_floating_point():
            expected = momentum * old.double() + (1 - momentum) * student[key].double()
            torch.testing.assert_close(new_teacher[key].double(), expected, rtol=1e-6, atol=1e-6)
            if momentum > 0 and not torch.equal(old, student[key]):
                assert not torch.allclose(new_teacher[key], student[key])
            checked += 1
        else:  # integer buffers are copied
            assert torch.equal(new_teacher[key], student[key])
    assert checked > 10
    assert "encoder.stat" in old_teacher and int(new_teacher["encoder.count"]) == 7
    # the student is untouched
    for key, value in pair.student.state_dict().items():
        assert torch.equal(value, student[key])


def test_voconet_defaults_to_the_papers_swin_b_encoder():
    net = VoCoNet()
    assert isinstance(net.encoder, SwinEncoder) and net.encoder.out_channels == 16 * 48
    assert net.projector.layers[0].in_features == 768 and net.projector.layers[-1].out_features == 2048


def test_swin_classifier_is_the_encoder_embedding_through_a_linear_head():
    """Logits = head(pooled last-stage embedding); the encoder keeps SwinUNETR's names, so an encoder state loads."""
    torch.manual_seed(0)
    encoder = SwinEncoder(feature_size=12, window_size=4).eval()
    classifier = SwinClassifier(num_classes=3, feature_size=12, window_size=4, dropout=0.5).eval()
    result = classifier.load_state_dict(encoder.state_dict(), strict=False)
    assert sorted(result.missing_keys) == ["head.bias", "head.weight"] and not result.unexpected_keys
    x = torch.rand(2, 1, 64, 64, 64)
    with torch.no_grad():
        logits = classifier(x)
        expected = encoder(x) @ classifier.head.weight.T + classifier.head.bias
    assert logits.shape == (2, 3)
    torch.testing.assert_close(logits, expected)
    assert classifier.head.in_features == 16 * 12


def test_multiscale_training_on_too_small_crops_names_the_limit():
    """32³ crops leave the deepest level 1x1x1, which the official variant's instance norm cannot train on:
    the encoder says so instead of failing inside torch; 64x32x32 (deepest 2x1x1) trains."""
    encoder = SwinEncoder(feature_size=FS, window_size=4, multiscale=True).train()
    with pytest.raises(ValueError, match="roi_size of 64"):
        encoder(torch.zeros(2, 1, 32, 32, 32))
    assert encoder(torch.zeros(2, 1, 64, 32, 32)).shape == (2, 24 * FS)


@pytest.mark.parametrize("value", ["false", "False", 0, None])
def test_projection_head_refuses_a_batch_stats_that_is_not_a_bool(value):
    """A truthy string such as 'false' must not silently keep batch statistics (the bundles pass the id through
    ``voco_components.utils.as_bool``, which reads it as meant)."""
    with pytest.raises(TypeError, match="must be True or False"):
        ProjectionHead(in_dim=10, hidden_dim=7, out_dim=5, batch_stats=value)


# ---------------------------------------------------------------- 2D (radiographs)


def test_2d_encoder_export_loads_strictly_into_swinunetr_2d_and_the_classifier():
    """The state dict of a 2D SwinEncoder is SwinUNETR(spatial_dims=2)'s swinViT, key for key (strict load), and
    the 2D classifier takes it with only its head missing; the hidden states and logits then agree."""
    torch.manual_seed(0)
    encoder = SwinEncoder(feature_size=FS, window_size=7, spatial_dims=2, attention="monai").eval()
    state = encoder.state_dict()
    assert state and all(k.startswith("swinViT.") for k in state)
    torch.manual_seed(1)
    full = SwinUNETR(in_channels=1, out_channels=2, feature_size=FS, window_size=7, spatial_dims=2).eval()
    full.swinViT.load_state_dict({k.removeprefix("swinViT."): v for k, v in state.items()}, strict=True)
    classifier = SwinClassifier(num_classes=14, feature_size=FS, window_size=7, spatial_dims=2, attention="monai")
    result = classifier.load_state_dict(state, strict=False)
    assert sorted(result.missing_keys) == ["head.bias", "head.weight"] and not result.unexpected_keys
    x = _randn(2, 1, 224, 224, seed=5)
    with torch.no_grad():
        mine, theirs = encoder.swinViT(x, encoder.normalize), full.swinViT(x, full.normalize)
        for a, b in zip(mine, theirs, strict=True):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        assert theirs[4].shape == (2, 16 * FS, 7, 7)
        pooled = encoder(x)
        torch.testing.assert_close(pooled, theirs[4].mean(dim=(2, 3)))
        logits = classifier.eval()(x)
    assert logits.shape == (2, 14)
    torch.testing.assert_close(logits, pooled @ classifier.head.weight.T + classifier.head.bias)


def test_encoder_refuses_other_spatial_dims():
    with pytest.raises(ValueError, match="spatial_dims must be 2"):
        SwinEncoder(feature_size=FS, spatial_dims=1)


def test_2d_unet_encoder_loads_into_basicunet_2d():
    torch.manual_seed(0)
    encoder = UNetEncoder(features=UNET_FEATURES, multiscale=True, spatial_dims=2).eval()
    full = BasicUNet(spatial_dims=2, in_channels=1, out_channels=2, features=UNET_FEATURES).eval()
    full.load_state_dict(encoder.state_dict(), strict=False)
    x = _randn(2, 1, 32, 32, seed=6)
    with torch.no_grad():
        levels = encoder.probe_feature_maps(x)
        expected = full.conv_0(x)
        torch.testing.assert_close(levels[0], expected)
        assert encoder(x).shape == (2, sum(UNET_FEATURES[:5]))


def test_classifier_head_starts_at_zero_or_from_a_small_normal():
    torch.manual_seed(0)
    zero = SwinClassifier(num_classes=14, feature_size=FS, window_size=4, spatial_dims=2)
    assert not zero.head.weight.any() and not zero.head.bias.any()
    small = SwinClassifier(num_classes=14, feature_size=FS, window_size=4, spatial_dims=2, head_init_std=0.02)
    assert not small.head.bias.any()
    assert float(small.head.weight.std()) == pytest.approx(0.02, rel=0.1)  # 14 x 192 draws
    with pytest.raises(ValueError, match="head_init_std"):
        SwinClassifier(num_classes=2, feature_size=FS, window_size=4, head_init_std=-1.0)


def torchvision_resnet18_names() -> list[str]:
    """torchvision's ResNet-18 state-dict names without ``fc.*``, written out from its layout: a stem, four stages of
    two basic blocks, a projection shortcut (``downsample.0`` conv, ``downsample.1`` batch norm) in the first block of
    stages 2-4."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    names = ["conv1.weight", *(f"bn1.{p}" for p in bn)]
    for stage in range(1, 5):
        for block in range(2):
            prefix = f"layer{stage}.{block}"
            for conv in (1, 2):
                names += [f"{prefix}.conv{conv}.weight", *(f"{prefix}.bn{conv}.{p}" for p in bn)]
            if stage > 1 and block == 0:
                names += [f"{prefix}.downsample.0.weight", *(f"{prefix}.downsample.1.{p}" for p in bn)]
    return names


def test_resnet18_encoder_has_torchvisions_architecture_and_names():
    encoder = ResNet18Encoder(in_channels=3)
    assert sorted(encoder.state_dict()) == sorted(torchvision_resnet18_names())
    # torchvision's resnet18 has 11,689,512 parameters, of which its 1000-class fc holds 512 * 1000 + 1000
    assert sum(p.numel() for p in encoder.parameters()) == 11_689_512 - 513_000
    assert ResNet18Encoder().conv1.weight.shape == (64, 1, 7, 7)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_resnet18_encoder_levels_and_pooled_embedding(spatial_dims):
    torch.manual_seed(0)
    size = (64,) * 2 if spatial_dims == 2 else (32,) * 3
    x = _randn(2, 1, *size, seed=3)
    encoder = ResNet18Encoder(spatial_dims=spatial_dims).eval()
    multiscale = ResNet18Encoder(multiscale=True, spatial_dims=spatial_dims).eval()
    multiscale.load_state_dict(encoder.state_dict())
    axes = tuple(range(2, 2 + spatial_dims))
    with torch.no_grad():
        levels = encoder.probe_feature_maps(x)
        assert [lvl.shape[1:] for lvl in levels] == [
            (c, *(s // f for s in size)) for c, f in zip((64, 64, 128, 256, 512), (2, 4, 8, 16, 32), strict=True)
        ]
        # MONAI's own ResNet forward (average pooling of layer4, no fc) gives the pooled embedding
        torch.testing.assert_close(encoder(x), ResNet.forward(encoder, x))
        torch.testing.assert_close(encoder(x), levels[-1].mean(dim=axes))
        torch.testing.assert_close(multiscale(x), torch.cat([lvl.mean(dim=axes) for lvl in levels], dim=1))
    assert (encoder.out_channels, multiscale.out_channels) == (512, 1024)


def test_resnet18_classifier_loads_the_encoder_export_and_adds_a_head(tmp_path):
    torch.manual_seed(0)
    encoder = ResNet18Encoder().eval()
    torch.save(encoder.state_dict(), tmp_path / "resnet18.pt")
    classifier = ResNet18Classifier(num_classes=3, head_init_std=0.01).eval()
    report = load_pretrained(classifier, tmp_path / "resnet18.pt", min_encoder_fraction=1.0)
    assert sorted(report.loaded) == sorted(encoder.state_dict()) and report.encoder_fraction == 1.0
    assert report.missing == ["head.bias", "head.weight"]
    x = _randn(2, 1, 64, 64, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(classifier(x), encoder(x) @ classifier.head.weight.T + classifier.head.bias)
