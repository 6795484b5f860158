"""The end of a ``torch.distributed`` run: every rank done, the process group and its worker threads gone, before
Python shuts down."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

# What a DistributedDataParallel wrapper holds the process group by: the group itself, and the C++ reducer (directly
# and through the logger that wraps it).
_GROUP_HOLDERS = ("logger", "reducer", "process_group")


def end_distributed(network: torch.nn.Module | None = None) -> None:
    """Wait for every rank, then destroy the default process group, its worker threads with it.

    ``torch.distributed.destroy_process_group`` forgets the group but cannot free it while a
    ``DistributedDataParallel`` wrapper still holds it. The group then lives until the interpreter shuts down, and
    Gloo's worker threads with it: a thread that lets go of its last collective's tensors at that moment must take
    the GIL, which a shutting-down Python refuses by ending the thread, and a rank whose run succeeded dies with
    SIGABRT ("terminate called without an active exception"). So ``network`` lets go of the group first; destroying
    the group then joins its threads while Python is whole. Nothing happens where no group is initialised.

    Args:
        network: the run's ``DistributedDataParallel`` wrapper; it cannot run forward afterwards. Any other module
            (or None) is left as it is.
    """
    if not dist.is_initialized():
        return
    dist.barrier()
    if isinstance(network, DistributedDataParallel):
        for name in _GROUP_HOLDERS:
            if hasattr(network, name):
                delattr(network, name)
    dist.destroy_process_group()
