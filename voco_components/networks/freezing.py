"""Freeze named submodules of a network: no gradients, and evaluation mode kept whatever ``train()`` is called."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

__all__ = ["freeze"]


def freeze(network: nn.Module, names: Sequence[str]) -> nn.Module:
    """Freeze the submodules ``names`` (attribute paths such as ``"swinViT"``) of ``network`` in place.

    Their parameters get ``requires_grad=False`` and they are put in evaluation mode; a forward pre-hook on
    ``network`` puts them back in evaluation mode before every forward pass, because trainers (MONAI's
    ``SupervisedTrainer`` among them) call ``network.train()`` at every iteration, which would otherwise
    switch dropout and normalisation of the frozen part back to training behaviour.

    Returns:
        ``network`` itself, so that a config can write ``freeze(@network_def, ['swinViT']).to(@device)``.

    Raises:
        ValueError: a name is not a submodule of ``network``.
    """
    available = dict(network.named_modules())
    missing = [name for name in names if name not in available or not name]
    if missing:
        raise ValueError(f"cannot freeze {missing}: not submodules of {type(network).__name__}.")
    frozen = [available[name] for name in names]
    for module in frozen:
        module.requires_grad_(False)
        module.eval()

    def keep_frozen_in_eval(_module: nn.Module, _inputs: tuple) -> None:
        for module in frozen:
            module.eval()

    network.register_forward_pre_hook(keep_frozen_in_eval)
    return network
