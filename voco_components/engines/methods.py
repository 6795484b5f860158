"""The pretraining methods of ``voco_pretrain``: VoCo and the baselines it is compared with, looked up by name.

``train.json`` holds VoCo's parts; ``configs/methods/<method>.json`` replaces them with another method's (its
network, crops or views, batch preparation, criterion and pretext metrics) and sets ``method`` and
``method_parts`` to its name. :func:`check_method`, in the bundle's ``initialize``, refuses an unknown method and a
``method`` whose overlay is missing.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PretrainMethod", "METHODS", "get_method", "check_method"]


@dataclass(frozen=True)
class PretrainMethod:
    """A pretraining method.

    Attributes:
        name: the ``method`` id of the bundle.
        reference: the paper it follows.
        pretext_metrics: its held-out pretext metrics (evaluator metric names), the first one the key metric.
        higher_is_better: for each pretext metric, whether a larger value is better.
    """

    name: str
    reference: str
    pretext_metrics: tuple[str, ...]
    higher_is_better: tuple[bool, ...]

    @property
    def overlay(self) -> str:
        """The overlay under the bundle's ``configs/`` that holds the method's parts."""
        return f"methods/{self.name}.json"


METHODS = {
    "voco": PretrainMethod(
        "voco", "Wu, Zhuang and Chen, CVPR 2024", ("val_position_top1", "val_position_auc"), (True, True)
    ),
    "simmim": PretrainMethod("simmim", "Xie et al., CVPR 2022", ("val_masked_l1",), (False,)),
    "swin_ssl": PretrainMethod(
        "swin_ssl", "Tang et al., CVPR 2022", ("val_rotation_accuracy", "val_view_top1"), (True, True)
    ),
    "simclr": PretrainMethod("simclr", "Chen et al., ICML 2020", ("val_view_top1",), (True,)),
}


def get_method(name: str) -> PretrainMethod:
    """Look a method up by name; a ``ValueError`` lists the methods."""
    if name not in METHODS:
        raise ValueError(f"unknown pretraining method {name!r}; the methods are {sorted(METHODS)}.")
    return METHODS[name]


def check_method(method: str, parts: str, variant: str = "paper") -> PretrainMethod:
    """The method ``method`` after checking that the configs hold its parts.

    Args:
        method: the bundle's ``method`` id.
        parts: the ``method_parts`` id: the method whose parts the merged configs hold (``voco`` in ``train.json``,
            the overlay's name in ``configs/methods/<name>.json``).
        variant: the VoCo variant; the other methods train the single-scale encoder of the ``paper`` variant.
    """
    found = get_method(method)
    if parts != method:
        raise ValueError(
            f"method {method!r}: the configs hold the parts of {parts!r}. Add configs/{found.overlay} after "
            f"train.json (--config_file \"['configs/train.json','configs/{found.overlay}']\")."
        )
    if method != "voco" and variant != "paper":
        raise ValueError(f"method {method!r} trains the single-scale encoder of variant 'paper', got {variant!r}.")
    return found
