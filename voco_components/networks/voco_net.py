"""The VoCo networks: a projector giving one vector per crop, the encoder-plus-projector network, and the
author code's student and EMA teacher."""

from __future__ import annotations

import copy

import torch
from torch import nn

from voco_components.networks.encoders import SwinEncoder

__all__ = [
    "ProjectionHead",
    "VoCoNet",
    "VoCoTeacherStudent",
]


class ProjectionHead(nn.Module):
    """Linear-BN-ReLU, Linear-BN-ReLU, Linear: (N, in_dim) -> (N, out_dim).

    By default the batch norms always use the statistics of the current batch, in training and evaluation
    alike, as in the author code (``track_running_stats=False``): the n base and k random crops of a volume
    are normalised together, so held-out position metrics see the same normalisation as training.
    A forward pass then needs N > 1. ``batch_stats=False`` gives ordinary batch norms, which evaluate with
    the running statistics gathered in training.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 2048, out_dim: int = 2048, batch_stats: bool = True) -> None:
        super().__init__()
        if not isinstance(batch_stats, bool):
            raise TypeError(f"batch_stats must be True or False, got {batch_stats!r}.")
        track = not batch_stats
        self.layers = nn.Sequential(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim, track_running_stats=track),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim, track_running_stats=track),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class VoCoNet(nn.Module):
    """Encoder with pooling -> projector: one projected vector per crop.

    The encoder is kept as the ``encoder`` attribute so that it can be exported on its own
    (``net.encoder.state_dict()`` has ``SwinUNETR``'s key names for :class:`SwinEncoder`).

    Args:
        encoder: a module mapping crops to pooled embeddings (N, out_channels) and exposing
            ``out_channels``, e.g. :class:`SwinEncoder` or :class:`UNetEncoder`; ``SwinEncoder()``
            (feature_size 48, the paper's Swin-B) when None.
        hidden_dim: projector hidden width.
        out_dim: projected feature size C (2048 in the paper).
        projector_batch_stats: the projector's batch norms use the current batch's statistics in
            evaluation too (the author code's choice, see :class:`ProjectionHead`).

    Forward: crops (N, C_in, D, H, W) -> features (N, out_dim).
    """

    def __init__(
        self,
        encoder: nn.Module | None = None,
        hidden_dim: int = 2048,
        out_dim: int = 2048,
        projector_batch_stats: bool = True,
    ) -> None:
        super().__init__()
        self.encoder = SwinEncoder() if encoder is None else encoder
        self.projector = ProjectionHead(int(self.encoder.out_channels), hidden_dim, out_dim, projector_batch_stats)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))


class VoCoTeacherStudent(nn.Module):
    """The author code's student/teacher pair: the teacher is an exponential moving average of the student.

    The teacher starts as a copy of the student, takes no gradients, and is updated by
    :meth:`update_teacher` (see :class:`voco_components.handlers.ema_teacher.EMATeacherHandler`).

    Forward: crops (N, C_in, D, H, W) -> (2, N, C): student features, then teacher features.
    """

    def __init__(self, student: VoCoNet) -> None:
        super().__init__()
        self.student = student
        self.teacher = copy.deepcopy(student)
        self.teacher.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        student = self.student(x)
        with torch.no_grad():
            self.teacher.train(self.student.training)
            teacher = self.teacher(x)
        return torch.stack((student, teacher.detach()))

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """teacher <- momentum * teacher + (1 - momentum) * student, for parameters and float buffers.

        One ``torch._foreach_*`` call per operation over all tensors instead of a Python loop over them;
        other buffers (integer indices) are copied.
        """
        pairs = list(zip(self.teacher.parameters(), self.student.parameters(), strict=True))
        for t_buf, s_buf in zip(self.teacher.buffers(), self.student.buffers(), strict=True):
            if t_buf.is_floating_point():
                pairs.append((t_buf, s_buf))
            else:
                t_buf.copy_(s_buf)
        if pairs:
            teacher, student = (list(side) for side in zip(*pairs, strict=True))
            torch._foreach_mul_(teacher, momentum)
            torch._foreach_add_(teacher, student, alpha=1.0 - momentum)
