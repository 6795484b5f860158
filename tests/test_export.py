"""Tests of the encoder export (voco_components.engines.export) and the checkpoint key mapping of the evaluation
(voco_components.networks.weights.normalise_state_dict on training states), on hand-written state dicts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from voco_components.engines.export import encoder_state, export_encoder, main
from voco_components.networks.weights import normalise_state_dict


def t(value, n=2):
    return torch.full((n,), float(value))


def assert_same_tensors(actual, expected):
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


# ------------------------------------------------------------------------------------------------ encoder_state


def test_encoder_state_of_a_voco_net():
    state = {"encoder.swinViT.a": t(1), "encoder.norm.b": t(2), "projector.c": t(3)}
    assert_same_tensors(encoder_state(state), {"swinViT.a": t(1), "norm.b": t(2)})


def test_encoder_state_prefers_the_student():
    state = {
        "teacher.encoder.a": t(0),
        "student.encoder.a": t(1),
        "student.projector.p": t(2),
        "encoder.a": t(3),  # a plain encoder next to the student is not taken
    }
    assert_same_tensors(encoder_state(state), {"a": t(1)})


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        ({"module.student.encoder.a": t(1), "module.teacher.encoder.a": t(2)}, {"a": t(1)}),
        ({"module.encoder.a": t(1), "module.projector.p": t(2)}, {"a": t(1)}),
    ],
)
def test_encoder_state_strips_ddp_prefixes(state, expected):
    assert_same_tensors(encoder_state(state), expected)


@pytest.mark.parametrize("state", [{}, {"swinViT.a": t(1)}, {"teacher.encoder.a": t(1)}, {"my_encoder.a": t(1)}])
def test_encoder_state_without_an_encoder_raises(state):
    with pytest.raises(KeyError, match="no encoder weights"):
        encoder_state(state)


# ------------------------------------------------------------------------------------------------ export_encoder


def test_export_encoder_writes_plain_detached_cpu_copies(tmp_path):
    big = torch.arange(1_000_000, dtype=torch.float32)
    weight = torch.nn.Parameter(torch.arange(12.0).reshape(3, 4))
    state = {
        "slice": big[10:20],  # a view of a 4 MB storage
        "transposed": torch.arange(6.0).reshape(2, 3).t(),  # not contiguous
        "weight": weight,  # requires grad
        "step": torch.tensor(7),
    }
    expected = {k: v.detach().clone() for k, v in state.items()}
    path = tmp_path / "models" / "model.pt"
    sidecar = export_encoder(state, path, {"variant": "paper", "roi": (64, 64, 64), "where": tmp_path})

    assert sidecar == tmp_path / "models" / "model.json"
    loaded = torch.load(path, weights_only=True)
    assert_same_tensors(loaded, expected)
    for value in loaded.values():
        assert value.device.type == "cpu" and value.is_contiguous() and not value.requires_grad
    assert path.stat().st_size < 100_000  # the slice's 4 MB storage was not written
    assert json.loads(sidecar.read_text()) == {"variant": "paper", "roi": [64, 64, 64], "where": str(tmp_path)}

    with torch.no_grad():  # the file holds copies, not the source tensors
        big.zero_()
        weight.fill_(-1.0)
    assert_same_tensors(torch.load(path, weights_only=True), expected)
    assert sorted(p.name for p in path.parent.iterdir()) == ["model.json", "model.pt"]


def training_checkpoint(path):
    state = {
        "network": {"encoder.swinViT.x": t(1, 3), "encoder.norm.w": t(2, 3), "projector.y": t(3)},
        "optimizer": {"state": {}, "param_groups": []},
        "trainer": {"iteration": 5, "epoch_length": 5, "max_epochs": 1},
    }
    torch.save(state, path)
    return {"swinViT.x": t(1, 3), "norm.w": t(2, 3)}


def test_main_exports_the_encoder_of_a_training_checkpoint(tmp_path, capsys):
    checkpoint = tmp_path / "checkpoint_5.pt"
    expected = training_checkpoint(checkpoint)
    output = tmp_path / "out" / "model.pt"
    main(str(checkpoint), str(output), sidecar_info='{"variant": "official"}')
    assert_same_tensors(torch.load(output, weights_only=True), expected)
    info = json.loads((tmp_path / "out" / "model.json").read_text())
    assert info == {"source_checkpoint": str(checkpoint), "variant": "official", "steps": 5}
    assert str(output) in capsys.readouterr().out


def test_main_accepts_a_bare_network_state(tmp_path):
    checkpoint = tmp_path / "best.pt"
    torch.save({"student.encoder.a": t(1), "teacher.encoder.a": t(2)}, checkpoint)
    main(str(checkpoint), str(tmp_path / "model.pt"))
    assert_same_tensors(torch.load(tmp_path / "model.pt", weights_only=True), {"a": t(1)})
    assert json.loads((tmp_path / "model.json").read_text()) == {"source_checkpoint": str(checkpoint)}


def run_cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "voco_components.engines.export", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_command_line_export(tmp_path):
    checkpoint = tmp_path / "checkpoint_5.pt"
    expected = training_checkpoint(checkpoint)
    output = tmp_path / "model.pt"
    result = run_cli(checkpoint, output)
    assert result.returncode == 0, result.stderr
    assert_same_tensors(torch.load(output, weights_only=True), expected)
    assert json.loads((tmp_path / "model.json").read_text()) == {"source_checkpoint": str(checkpoint), "steps": 5}


def test_command_line_export_with_sidecar_info(tmp_path):
    checkpoint = tmp_path / "checkpoint_5.pt"
    training_checkpoint(checkpoint)
    result = run_cli(checkpoint, tmp_path / "model.pt", "--sidecar_info", '{"variant": "paper"}')
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "model.json").read_text())["variant"] == "paper"


# ------------------------------------------------------------------------------------- training_to_network_state


@pytest.mark.parametrize("prefix", ["", "module."])
def test_training_state_normalises_to_the_student(prefix):
    state = {
        f"{prefix}student.encoder.a": t(1),
        f"{prefix}student.projector.b": t(2),
        f"{prefix}teacher.encoder.a": t(3),
        f"{prefix}teacher.projector.b": t(4),
    }
    assert_same_tensors(normalise_state_dict(state), {"encoder.a": t(1), "projector.b": t(2)})


def test_training_state_without_student_keeps_plain_keys():
    state = {"encoder.a": t(1), "projector.b": t(2)}
    assert_same_tensors(normalise_state_dict(state), state)
    assert_same_tensors(normalise_state_dict({"module.encoder.a": t(1)}), {"encoder.a": t(1)})
