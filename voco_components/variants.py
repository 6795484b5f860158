"""The two VoCo variants, chosen by one name: ``paper`` (the default) and ``official`` (the public author code).

``docs/variants.md`` sets them side by side with every difference cited.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from voco_components.networks.voco_net import VoCoNet, VoCoTeacherStudent

__all__ = ["VoCoVariant", "VARIANTS", "get_variant", "training_network"]


@dataclass(frozen=True)
class VoCoVariant:
    """What a variant changes.

    Attributes:
        name: ``paper`` or ``official``.
        multiscale_embedding: pool five encoder levels (author code) instead of the last Swin stage.
        teacher_momentum: EMA momentum of the teacher; None for no teacher.
    """

    name: str
    multiscale_embedding: bool
    teacher_momentum: float | None

    @property
    def uses_teacher(self) -> bool:
        return self.teacher_momentum is not None


VARIANTS = {
    "paper": VoCoVariant(name="paper", multiscale_embedding=False, teacher_momentum=None),
    "official": VoCoVariant(name="official", multiscale_embedding=True, teacher_momentum=0.9),
}


def get_variant(name: str) -> VoCoVariant:
    """Look a variant up by name; ``ValueError`` names the known ones."""
    if name not in VARIANTS:
        raise ValueError(f"unknown VoCo variant {name!r}; choose one of {sorted(VARIANTS)}.")
    return VARIANTS[name]


def training_network(network: VoCoNet, variant: str) -> nn.Module:
    """The module the trainer runs: the network itself (paper) or a student/teacher pair around it (official)."""
    return VoCoTeacherStudent(network) if get_variant(variant).uses_teacher else network
