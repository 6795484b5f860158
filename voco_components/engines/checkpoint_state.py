"""The state a checkpoint holds beside the engine, network and optimiser (the random generators), and the
step-numbered checkpoint files of a folder."""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "RNGState",
    "checkpoint_steps",
    "latest_checkpoint",
]


_STEP_FILE = re.compile(r"^checkpoint_(\d+)\.pt$")


class RNGState:
    """The Python, NumPy and torch (CPU and CUDA) random states as a ``state_dict`` of plain tensors,
    so that it loads with ``torch.load(weights_only=True)``."""

    def state_dict(self) -> dict[str, Any]:
        version, mt_state, gauss = random.getstate()
        np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
        state = {
            "python_version": version,
            "python_state": torch.tensor(mt_state, dtype=torch.int64),
            "python_gauss": gauss,
            "numpy_name": np_name,
            "numpy_keys": torch.from_numpy(np.asarray(np_keys, dtype=np.int64)),
            "numpy_pos": int(np_pos),
            "numpy_has_gauss": int(np_has_gauss),
            "numpy_gauss": float(np_gauss),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate((state["python_version"], tuple(state["python_state"].tolist()), state["python_gauss"]))
        np.random.set_state(
            (
                state["numpy_name"],
                state["numpy_keys"].numpy().astype(np.uint32),
                state["numpy_pos"],
                state["numpy_has_gauss"],
                state["numpy_gauss"],
            )
        )
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_steps(save_dir: str | Path) -> list[int]:
    """Steps of the ``checkpoint_<step>.pt`` files in ``save_dir``, ascending."""
    folder = Path(save_dir)
    if not folder.is_dir():
        return []
    return sorted(int(m.group(1)) for p in folder.iterdir() if (m := _STEP_FILE.match(p.name)))


def latest_checkpoint(save_dir: str | Path) -> Path | None:
    """The ``checkpoint_<step>.pt`` with the highest step in ``save_dir``, or None."""
    steps = checkpoint_steps(save_dir)
    return Path(save_dir) / f"checkpoint_{steps[-1]}.pt" if steps else None
