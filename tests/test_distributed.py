"""Tests of the end of a distributed run (voco_components.engines.distributed) under two gloo ranks."""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from voco_components.engines.distributed import end_distributed

GLOO_THREADS = ("pt_gloo_runloop", "gloo_tcp_loop")


def thread_names() -> list[str]:
    """The names of this process's threads, C++ ones included, as the kernel knows them."""
    tasks = Path("/proc/self/task")
    return sorted((tasks / task / "comm").read_text().strip() for task in os.listdir(tasks))


def gloo_threads() -> int:
    return sum(name in GLOO_THREADS for name in thread_names())


def _rank(rank: int, world: int, port: int, out: str) -> None:
    """One gloo rank: a DDP step and an all_gather (the collectives a run ends with), then ``end_distributed``."""
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    network = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 2))
    network(torch.randn(4, 3)).sum().backward()
    gathered = [torch.zeros(1) for _ in range(world)]
    dist.all_gather(gathered, torch.tensor([float(rank)]))
    during = gloo_threads()
    end_distributed(network)
    record = {
        "gathered": [t.item() for t in gathered],
        "during": during,
        "after": gloo_threads(),
        "initialized": dist.is_initialized(),
        "holds_group": [hasattr(network, name) for name in ("process_group", "reducer", "logger")],
    }
    Path(out, f"rank{rank}.json").write_text(json.dumps(record))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads thread names from /proc")
def test_end_distributed_destroys_the_group_and_joins_its_worker_threads(tmp_path):
    """``destroy_process_group`` alone leaves Gloo's threads running while DDP holds the group (the cause of a
    SIGABRT at interpreter shutdown); after ``end_distributed`` none is left, on every rank."""
    world = 2
    mp.spawn(_rank, args=(world, free_port(), str(tmp_path)), nprocs=world, join=True)
    for rank in range(world):
        record = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert record["gathered"] == [0.0, 1.0]
        assert record["during"] >= 2  # the group's worker threads and its transport loop were running
        assert record["after"] == 0
        assert not record["initialized"] and record["holds_group"] == [False, False, False]


def test_end_distributed_without_a_group_changes_nothing():
    network = torch.nn.Linear(3, 2)
    before = {k: v.clone() for k, v in network.state_dict().items()}
    end_distributed(network)
    end_distributed()
    assert not dist.is_initialized()
    assert all(torch.equal(before[k], v) for k, v in network.state_dict().items())
