"""Tests of voco_components.engines.speed and of the speed ids in the bundle configs."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from monai.bundle import ConfigParser

from voco_components.engines.speed import autocast_kwargs, compile_swin, fused_adamw
from voco_components.handlers.grad_scaler import GradScalerHandler
from voco_components.networks.attention import SDPAWindowAttention
from voco_components.networks.encoders import SwinEncoder
from voco_components.networks.voco_net import VoCoNet, VoCoTeacherStudent

BUNDLES = Path(__file__).resolve().parents[1] / "bundles"


def test_autocast_kwargs_and_bad_dtype():
    assert autocast_kwargs("bfloat16") == {"dtype": torch.bfloat16}
    assert autocast_kwargs("float16") == {"dtype": torch.float16}
    with pytest.raises(ValueError, match="amp_dtype must be one of"):
        autocast_kwargs("float32")


def test_grad_scaler_handler_disables_the_scaler_for_bfloat16_only():
    monai_scaler = torch.amp.GradScaler("cuda", enabled=False)  # stands in for the one MONAI's run() makes
    engine = SimpleNamespace(scaler=monai_scaler)
    GradScalerHandler("float16")(engine)
    assert engine.scaler is monai_scaler
    GradScalerHandler("bfloat16")(engine)
    assert engine.scaler is not monai_scaler and not engine.scaler.is_enabled()
    loss = torch.tensor(2.0)
    assert engine.scaler.scale(loss) is loss  # a disabled scaler passes the loss through unscaled
    none = SimpleNamespace(scaler=None)  # amp off: nothing to replace
    GradScalerHandler("bfloat16")(none)
    assert none.scaler is None


def test_fused_adamw_only_on_cuda():
    assert fused_adamw("cuda:0") is True
    assert fused_adamw(torch.device("cpu")) is None


def test_ema_foreach_update_equals_the_loop_formula_bit_for_bit():
    torch.manual_seed(0)
    pair = VoCoTeacherStudent(VoCoNet(SwinEncoder(feature_size=12, window_size=4), hidden_dim=8, out_dim=8))
    with torch.no_grad():
        for p in pair.student.parameters():
            p.add_(torch.randn_like(p))
    teacher = {k: v.clone() for k, v in pair.teacher.state_dict().items()}
    student = pair.student.state_dict()
    pair.update_teacher(0.9)
    for key, old in teacher.items():
        if old.is_floating_point():
            expected = old.clone().mul_(0.9).add_(student[key], alpha=0.1)  # the loop's per-tensor formula
        else:
            expected = student[key]  # relative_position_index
        assert torch.equal(pair.teacher.state_dict()[key], expected), key


@pytest.mark.parametrize("attention, expected", [("sdpa", True), ("monai", False)])
@pytest.mark.parametrize("bundle", ["voco_pretrain", "voco_btcv_seg", "voco_covid_cls", "voco_cxr14_cls"])
def test_bundle_attention_id_reaches_the_network(bundle, attention, expected):
    parser = ConfigParser()
    parser.read_config([str(BUNDLES / bundle / "configs" / "train.json")])
    parser.update({"attention": attention, "feature_size": 12, "window_size": 4})
    for key in ("amp_dtype", "compile", "fused_adamw"):
        assert key in parser.config, f"{bundle}: train.json has no '{key}'"
    net = parser.get_parsed_content("network_def")
    assert any(isinstance(m, SDPAWindowAttention) for m in net.modules()) is expected


@pytest.mark.slow  # inductor compiles for minutes on a shared 2-core machine
@pytest.mark.skipif(shutil.which("g++") is None and shutil.which("c++") is None, reason="no C++ compiler")
def test_compile_swin_trains_a_tiny_network():
    torch.manual_seed(0)
    net = VoCoNet(SwinEncoder(feature_size=12, window_size=4, depths=(1, 1, 1, 1)), hidden_dim=8, out_dim=8)
    keys = list(net.state_dict())
    compile_swin(net)
    assert list(net.state_dict()) == keys  # no _orig_mod. prefix
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    x = torch.rand(4, 1, 32, 32, 32)
    for _ in range(3):
        loss = net(x).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        assert torch.isfinite(loss)
