"""Export a pretrained VoCo encoder as a plain ``SwinUNETR``-keyed state dict with a JSON sidecar.

Command line: ``python -m voco_components.engines.export CHECKPOINT OUTPUT [--sidecar_info JSON]`` turns any
training checkpoint (``checkpoint_<step>.pt``) into ``OUTPUT`` (``models/model.pt``) plus
``OUTPUT`` with the suffix ``.json``."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from voco_components.utils import atomic_save, atomic_save_text

__all__ = [
    "encoder_state",
    "export_encoder",
]


_ENCODER_PREFIXES = ("student.encoder.", "module.student.encoder.", "encoder.", "module.encoder.")


def encoder_state(network_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The encoder part of a training network's state dict, with the encoder's own key names.

    Takes the student of a teacher/student pair (``student.encoder.*``) or the encoder of a
    :class:`voco_components.networks.voco_net.VoCoNet` (``encoder.*``), DDP ``module.`` prefixes included.
    """
    for prefix in _ENCODER_PREFIXES:
        found = {k[len(prefix) :]: v for k, v in network_state.items() if k.startswith(prefix)}
        if found:
            return found
    raise KeyError(f"no encoder weights found: expected keys starting with one of {_ENCODER_PREFIXES}.")


def export_encoder(state: Mapping[str, torch.Tensor], path: str | Path, info: Mapping[str, Any]) -> Path:
    """Write ``state`` (detached CPU tensors) to ``path`` atomically and ``info`` to ``path`` + ``.json``.

    The file loads with ``torch.load(path, weights_only=True)``. Returns the sidecar path.
    """
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in state.items()}
    atomic_save(tensors, path)
    sidecar = path.with_suffix(".json")
    atomic_save_text(json.dumps(dict(info), indent=4, default=str) + "\n", sidecar)
    return sidecar


def main(checkpoint: str, output: str, sidecar_info: str | Mapping[str, Any] = "{}") -> None:
    """Export the encoder of a training checkpoint (``{"network": state, ...}``) to ``output``.

    ``sidecar_info``: extra facts for the sidecar, as JSON text or (from the command line) a dict.
    """
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    network = state.get("network", state)
    extra = json.loads(sidecar_info) if isinstance(sidecar_info, str) else dict(sidecar_info)
    info = {"source_checkpoint": str(checkpoint), **extra}
    if "trainer" in state:
        info["steps"] = int(state["trainer"].get("iteration", 0))
    export_encoder(encoder_state(network), output, info)
    print(f"exported the encoder of {checkpoint} to {output}")


if __name__ == "__main__":
    import fire

    fire.Fire(main)
