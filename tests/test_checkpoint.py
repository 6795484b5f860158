"""Tests of the atomic writes (voco_components.utils), RNG snapshots, step checkpoints, resume and the best model
(voco_components.engines.checkpoint_state, voco_components.handlers.checkpoint).

Expected values come from the tests themselves: copies of the weights taken inside tiny Ignite runs, an
uninterrupted reference run that a killed-and-resumed run must reproduce bit for bit, and numbers drawn right
after an RNG snapshot.
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import random

import numpy as np
import pytest
import torch
from ignite.engine import Engine, Events

import voco_components.handlers.checkpoint as ckpt
from voco_components.engines.checkpoint_state import RNGState, checkpoint_steps, latest_checkpoint
from voco_components.handlers.checkpoint import BestMetricSaver, ResumeHandler, StepCheckpointSaver
from voco_components.utils import atomic_save, atomic_save_text


def leftover_temporaries(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp"))


def clone_state(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_same_state(actual, expected):
    assert sorted(actual) == sorted(expected)
    for key, value in expected.items():
        assert torch.equal(actual[key], value), key


class Unpicklable:
    def __reduce__(self):
        raise RuntimeError("cannot pickle this")


class FakeSampler:
    def __init__(self):
        self.calls = []

    def set_start_step(self, step):
        self.calls.append(step)


# ----------------------------------------------------------------------------------------------- atomic writes


def test_atomic_save_round_trips_creates_folders_and_is_world_readable(tmp_path):
    path = tmp_path / "sub" / "dir" / "state.pt"
    state = {"w": torch.arange(6.0).reshape(2, 3), "step": 3, "name": "x"}
    atomic_save(state, path)
    loaded = torch.load(path, weights_only=True)
    assert torch.equal(loaded["w"], state["w"]) and loaded["step"] == 3 and loaded["name"] == "x"
    assert path.stat().st_mode & 0o777 == 0o644
    assert leftover_temporaries(path.parent) == []

    atomic_save({"w": torch.zeros(1)}, path)  # overwriting an existing file
    assert torch.equal(torch.load(path, weights_only=True)["w"], torch.zeros(1))
    assert leftover_temporaries(path.parent) == []


def test_atomic_save_text_round_trips(tmp_path):
    path = tmp_path / "new" / "record.json"
    atomic_save_text('{"score": 0.5}\n', path)
    assert path.read_text() == '{"score": 0.5}\n'
    atomic_save_text("second\n", path)
    assert path.read_text() == "second\n"
    assert path.stat().st_mode & 0o777 == 0o644
    assert leftover_temporaries(path.parent) == []


def test_atomic_save_keeps_the_old_file_when_pickling_fails(tmp_path):
    path = tmp_path / "state.pt"
    atomic_save({"w": torch.ones(3)}, path)
    before = path.read_bytes()
    with pytest.raises(RuntimeError, match="cannot pickle this"):
        atomic_save({"w": torch.zeros(3), "bad": Unpicklable()}, path)
    assert path.read_bytes() == before
    assert leftover_temporaries(tmp_path) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.pt"]


@pytest.mark.parametrize("error", [OSError("disk full"), KeyboardInterrupt()])
def test_atomic_save_keeps_the_old_file_when_writing_stops_midway(tmp_path, monkeypatch, error):
    path = tmp_path / "state.pt"
    atomic_save({"w": torch.ones(3)}, path)
    before = path.read_bytes()
    written = []

    def half_save(obj, handle, *args, **kwargs):
        handle.write(b"PK\x03\x04 partial zip")  # some bytes of a new file, then a crash
        handle.flush()
        written.append(handle.name)
        raise error

    monkeypatch.setattr(torch, "save", half_save)
    with pytest.raises(type(error)):
        atomic_save({"w": torch.zeros(3)}, path)
    assert written, "the fake torch.save was not used"
    assert path.read_bytes() == before
    assert leftover_temporaries(tmp_path) == []


def test_atomic_save_text_keeps_the_old_file_when_writing_fails(tmp_path):
    path = tmp_path / "record.json"
    atomic_save_text("old\n", path)
    with pytest.raises(TypeError):
        atomic_save_text(12345, path)  # write() of a non-string raises after the temporary file exists
    assert path.read_text() == "old\n"
    assert leftover_temporaries(tmp_path) == []


# ----------------------------------------------------------------------------------------------------- RNGState


def draw_numbers():
    return (
        [random.random() for _ in range(3)],
        random.gauss(0.0, 1.0),
        np.random.rand(3).tolist(),
        np.random.randn(3).tolist(),
        torch.rand(3).tolist(),
        torch.randn(2).tolist(),
    )


def test_rng_state_restores_python_numpy_and_torch(tmp_path):
    random.seed(11)
    np.random.seed(12)
    torch.manual_seed(13)
    random.gauss(0.0, 1.0)  # leaves a cached second Gaussian in Python's state
    np.random.randn(1)  # ... and in NumPy's legacy state
    path = tmp_path / "rng.pt"
    torch.save(RNGState().state_dict(), path)
    expected = draw_numbers()

    draw_numbers()  # move every generator on
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    assert draw_numbers() != expected

    RNGState().load_state_dict(torch.load(path, weights_only=True))
    assert draw_numbers() == expected


# ------------------------------------------------------------------------------------------- checkpoint listing


def test_checkpoint_steps_and_latest_sort_numerically(tmp_path):
    assert checkpoint_steps(tmp_path / "missing") == []
    assert latest_checkpoint(tmp_path / "missing") is None
    assert latest_checkpoint(tmp_path) is None
    for name in (
        "checkpoint_2.pt",
        "checkpoint_10.pt",
        "checkpoint_best.pt",
        "checkpoint_init.pt",
        "checkpoint_3.pt.tmp",
        ".checkpoint_11.pt.abc.tmp",
        "checkpoint_-4.pt",
        "junk.txt",
    ):
        (tmp_path / name).write_bytes(b"")
    assert checkpoint_steps(tmp_path) == [2, 10]
    assert latest_checkpoint(tmp_path) == tmp_path / "checkpoint_10.pt"


# ------------------------------------------------------------------------------------------ tiny Ignite trainer


def make_model_and_optimizer(seed):
    torch.manual_seed(seed)
    model = torch.nn.Linear(3, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return model, optimizer


def make_trainer(model, optimizer):
    """One SGD step per iteration on random inputs (so the RNG state matters too)."""

    def step(engine, batch):
        optimizer.zero_grad()
        x = torch.randn(4, 3)
        loss = (model(x) - float(engine.state.iteration)).pow(2).mean()
        loss.backward()
        optimizer.step()
        return loss.item()

    return Engine(step)


def test_step_checkpoint_saver_keeps_the_newest_and_the_initial_weights(tmp_path):
    model, optimizer = make_model_and_optimizer(0)
    initial = clone_state(model)
    trainer = make_trainer(model, optimizer)
    weights_after = {}

    @trainer.on(Events.ITERATION_COMPLETED)
    def record(engine):
        weights_after[engine.state.iteration] = clone_state(model)

    saver = StepCheckpointSaver(tmp_path, {"network": model, "optimizer": optimizer}, interval=3, n_saved=2)
    saver.attach(trainer)
    existed = {}

    @trainer.on(Events.ITERATION_COMPLETED)  # runs after the saver's handler
    def listing(engine):
        existed[engine.state.iteration] = checkpoint_steps(tmp_path)

    trainer.run(list(range(7)), max_epochs=1)

    assert existed[3] == [3] and existed[6] == [3, 6] and existed[7] == [3, 6]  # the 7th comes at COMPLETED
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_6.pt", "checkpoint_7.pt", "checkpoint_init.pt"]

    init = torch.load(tmp_path / "checkpoint_init.pt", weights_only=True)
    assert list(init) == ["network"]
    assert_same_state(init["network"], initial)
    assert not torch.equal(weights_after[7]["weight"], initial["weight"])  # training did change the weights

    for step in (6, 7):
        state = torch.load(tmp_path / f"checkpoint_{step}.pt", weights_only=True)
        assert sorted(state) == ["network", "optimizer", "trainer"]
        assert state["trainer"]["iteration"] == step
        assert state["trainer"]["epoch_length"] == 7 and state["trainer"]["max_epochs"] == 1
        assert_same_state(state["network"], weights_after[step])
        momentum = [s["momentum_buffer"] for s in state["optimizer"]["state"].values()]
        assert len(momentum) == 2 and all(m.abs().sum() > 0 for m in momentum)
    assert leftover_temporaries(tmp_path) == []


def test_step_checkpoint_saver_without_initial_or_engine(tmp_path):
    model, optimizer = make_model_and_optimizer(0)
    trainer = make_trainer(model, optimizer)
    StepCheckpointSaver(tmp_path, {"net": model}, interval=2, n_saved=5, save_initial=False, engine_key=None).attach(
        trainer
    )
    trainer.run(list(range(4)), max_epochs=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_2.pt", "checkpoint_4.pt"]
    assert sorted(torch.load(tmp_path / "checkpoint_4.pt", weights_only=True)) == ["net"]


def test_step_checkpoint_saver_rejects_bad_arguments(tmp_path):
    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="interval"):
        StepCheckpointSaver(tmp_path, {"network": model}, interval=0)
    with pytest.raises(ValueError, match="n_saved"):
        StepCheckpointSaver(tmp_path, {"network": model}, interval=1, n_saved=0)
    with pytest.raises(ValueError, match="'network'"):
        StepCheckpointSaver(tmp_path, {"model": model}, interval=1)
    StepCheckpointSaver(tmp_path, {"model": model}, interval=1, save_initial=False)  # fine without the initial file


# ------------------------------------------------------------------------------------------------------ resume


def train_with_checkpoints(folder, max_epochs, seed=0):
    """Epochs of 2 iterations from seed ``seed``, checkpointing model, optimizer and RNG every 2 iterations."""
    model, optimizer = make_model_and_optimizer(seed)
    trainer = make_trainer(model, optimizer)
    StepCheckpointSaver(folder, {"network": model, "optimizer": optimizer, "rng": RNGState()}, interval=2).attach(
        trainer
    )
    trainer.run([0, 1], max_epochs=max_epochs)
    return model


def resumed_run(
    folder, max_epochs, enabled=True, seed=123, load_keys=("network", "optimizer", "rng"), existing="refuse"
):
    """A new model, optimizer and engine with the ResumeHandler attached first; records what the run sees."""
    model, optimizer = make_model_and_optimizer(seed)
    fresh = clone_state(model)
    trainer = make_trainer(model, optimizer)
    objects = {"network": model, "optimizer": optimizer, "rng": RNGState()}
    sampler = FakeSampler()
    ResumeHandler(folder, {k: objects[k] for k in load_keys}, enabled=enabled, sampler=sampler).attach(trainer)
    StepCheckpointSaver(folder, objects, interval=2, existing=existing).attach(trainer)
    seen = {"iterations": [], "start": None}

    @trainer.on(Events.ITERATION_STARTED)
    def record(engine):
        seen["iterations"].append(engine.state.iteration)
        if seen["start"] is None:
            seen["start"] = clone_state(model)

    trainer.run([0, 1], max_epochs=max_epochs)
    return model, fresh, seen, sampler


def test_resume_continues_exactly_where_the_killed_run_stopped(tmp_path):
    reference = train_with_checkpoints(tmp_path / "reference", max_epochs=3)  # 6 iterations without a break

    folder = tmp_path / "run"
    train_with_checkpoints(folder, max_epochs=2)  # "killed" after 4 iterations
    assert checkpoint_steps(folder) == [2, 4]
    at_4 = torch.load(folder / "checkpoint_4.pt", weights_only=True)
    init_bytes = (folder / "checkpoint_init.pt").read_bytes()

    model, fresh, seen, sampler = resumed_run(folder, max_epochs=3)
    assert not torch.equal(fresh["weight"], at_4["network"]["weight"])
    assert seen["iterations"] == [5, 6]  # Ignite counts an iteration before ITERATION_STARTED
    assert_same_state(seen["start"], at_4["network"])
    assert sampler.calls == [4]
    # optimizer momentum and RNG were restored too: the result is bit-identical to the uninterrupted run
    assert_same_state(clone_state(model), clone_state(reference))
    assert checkpoint_steps(folder) == [4, 6]
    assert torch.load(folder / "checkpoint_6.pt", weights_only=True)["trainer"]["iteration"] == 6
    assert (folder / "checkpoint_init.pt").read_bytes() == init_bytes  # a resumed run keeps the initial weights


def test_resume_disabled_refuses_to_mix_with_an_earlier_run(tmp_path):
    """A fresh run must not rotate away (or later resume from) another run's checkpoints."""
    train_with_checkpoints(tmp_path, max_epochs=2)
    before = {p.name: p.read_bytes() for p in tmp_path.glob("checkpoint_*.pt")}
    with pytest.raises(FileExistsError, match=r"steps \[2, 4\].*resume=true"):
        resumed_run(tmp_path, max_epochs=1, enabled=False)
    assert {p.name: p.read_bytes() for p in tmp_path.glob("checkpoint_*.pt")} == before


def test_a_fresh_run_can_archive_the_earlier_runs_checkpoints(tmp_path):
    """With existing="archive" every checkpoint_* file of the earlier run moves, unchanged, into
    earlier_runs/<n>, and the new run starts from its own initialisation with a folder of its own files."""
    train_with_checkpoints(tmp_path, max_epochs=2)
    (tmp_path / "checkpoint_best.json").write_text('{"score": 0.9}')  # e.g. a BestMetricSaver record
    first = {p.name: p.read_bytes() for p in tmp_path.glob("checkpoint_*")}
    model, fresh, seen, _ = resumed_run(tmp_path, max_epochs=1, enabled=False, existing="archive")
    assert seen["iterations"] == [1, 2]
    assert_same_state(seen["start"], fresh)
    assert {p.name: p.read_bytes() for p in (tmp_path / "earlier_runs" / "1").iterdir()} == first
    assert checkpoint_steps(tmp_path) == [2] and not (tmp_path / "checkpoint_best.json").exists()
    assert_same_state(torch.load(tmp_path / "checkpoint_init.pt", weights_only=True)["network"], fresh)

    second = {p.name: p.read_bytes() for p in tmp_path.glob("checkpoint_*")}
    resumed_run(tmp_path, max_epochs=1, enabled=False, existing="archive")  # a third run: the next number
    assert {p.name: p.read_bytes() for p in (tmp_path / "earlier_runs" / "2").iterdir()} == second
    assert len(list((tmp_path / "earlier_runs" / "1").iterdir())) == len(first)


def test_existing_must_be_refuse_or_archive(tmp_path):
    with pytest.raises(ValueError, match="existing must be one of"):
        StepCheckpointSaver(tmp_path, {"network": torch.nn.Linear(1, 1)}, interval=1, existing="overwrite")


def test_resume_disabled_starts_from_scratch(tmp_path):
    model, fresh, seen, sampler = resumed_run(tmp_path / "new", max_epochs=1, enabled=False)
    assert seen["iterations"] == [1, 2]
    assert_same_state(seen["start"], fresh)
    assert sampler.calls == [0]


def test_resume_from_an_empty_folder_warns_and_starts_from_scratch(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="voco_components.handlers.checkpoint"):
        model, fresh, seen, sampler = resumed_run(tmp_path / "empty", max_epochs=1)
    assert seen["iterations"] == [1, 2]
    assert_same_state(seen["start"], fresh)
    assert sampler.calls == [0]
    warnings = [
        r for r in caplog.records if r.levelno == logging.WARNING and r.name == "voco_components.handlers.checkpoint"
    ]
    assert len(warnings) == 1 and "no checkpoint" in warnings[0].getMessage()


def test_resume_from_a_checkpoint_lacking_an_object_names_the_file(tmp_path):
    model, optimizer = make_model_and_optimizer(0)
    trainer = make_trainer(model, optimizer)
    path = tmp_path / "checkpoint_3.pt"
    atomic_save({"network": model.state_dict(), "trainer": {"iteration": 3, "epoch_length": 2, "max_epochs": 2}}, path)
    ResumeHandler(tmp_path, {"network": model, "optimizer": optimizer}).attach(trainer)
    with pytest.raises(KeyError) as excinfo:
        trainer.run([0, 1], max_epochs=2)
    message = str(excinfo.value)
    assert str(path) in message and "optimizer" in message


@pytest.mark.skipif(
    "max_iters" not in inspect.signature(Engine.run).parameters, reason="this Ignite's Engine.run has no max_iters"
)
def test_resume_extends_a_run_given_max_iters(tmp_path):
    model, optimizer = make_model_and_optimizer(0)
    trainer = make_trainer(model, optimizer)
    StepCheckpointSaver(tmp_path, {"network": model}, interval=2).attach(trainer)
    trainer.run([0, 1], max_iters=4)
    resumed = make_trainer(model, optimizer)
    ResumeHandler(tmp_path, {"network": model}).attach(resumed)
    resumed.run([0, 1], max_iters=6)
    assert resumed.state.iteration == 6


# ------------------------------------------------------------------------------------------------- best metric


def evaluate_with(saver, model, score):
    """One run of an evaluator-like engine whose metric is ``score``; the network's weights are filled with it."""
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(score)
    evaluator = Engine(lambda engine, batch: None)

    @evaluator.on(Events.EPOCH_COMPLETED)
    def compute(engine):
        engine.state.metrics["val_top1"] = score

    saver.attach(evaluator)
    evaluator.run([0], max_epochs=1)


def test_best_metric_saver_saves_only_improvements_and_survives_a_restart(tmp_path, monkeypatch):
    writes = []
    real_save = ckpt.atomic_save

    def counting_save(obj, path):
        writes.append(path.name)
        real_save(obj, path)

    monkeypatch.setattr(ckpt, "atomic_save", counting_save)
    model = torch.nn.Linear(2, 1)
    saver = BestMetricSaver(tmp_path, model, "val_top1")
    best = tmp_path / "checkpoint_best.pt"
    record = tmp_path / "checkpoint_best.json"

    def saved_weight():
        return float(torch.load(best, weights_only=True)["network"]["weight"][0, 0])

    evaluate_with(saver, model, 0.5)
    assert saved_weight() == pytest.approx(0.5) and writes == ["checkpoint_best.pt"]
    evaluate_with(saver, model, 0.4)
    assert saved_weight() == pytest.approx(0.5) and writes == ["checkpoint_best.pt"]
    evaluate_with(saver, model, 0.5)  # a tie is not an improvement
    assert writes == ["checkpoint_best.pt"]
    evaluate_with(saver, model, 0.7)
    assert saved_weight() == pytest.approx(0.7) and writes == ["checkpoint_best.pt"] * 2
    assert json.loads(record.read_text()) == {"metric": "val_top1", "score": 0.7, "epoch": 1}

    restarted = BestMetricSaver(tmp_path, model, "val_top1")  # a resumed run reads checkpoint_best.json
    evaluate_with(restarted, model, 0.6)
    assert saved_weight() == pytest.approx(0.7) and json.loads(record.read_text())["score"] == 0.7
    evaluate_with(restarted, model, 0.8)
    assert saved_weight() == pytest.approx(0.8) and json.loads(record.read_text())["score"] == 0.8
    assert writes == ["checkpoint_best.pt"] * 3
    assert leftover_temporaries(tmp_path) == []


def test_best_metric_saver_ignores_a_nan_score(tmp_path):
    model = torch.nn.Linear(2, 1)
    saver = BestMetricSaver(tmp_path, model, "val_top1")
    evaluate_with(saver, model, 0.7)
    evaluate_with(saver, model, math.nan)
    assert json.loads((tmp_path / "checkpoint_best.json").read_text())["score"] == 0.7
