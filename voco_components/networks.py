"""VoCo networks: an encoder with 3D adaptive average pooling, and a projector giving one vector per crop."""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet, SwinUNETR
from torch import nn

from voco_components.attention import set_window_attention
from voco_components.freezing import freeze

__all__ = [
    "pool_and_concat",
    "probe_features",
    "SwinEncoder",
    "SwinClassifier",
    "SwinLinearProbe",
    "UNetEncoder",
    "ProjectionHead",
    "VoCoNet",
    "VoCoTeacherStudent",
]


def pool_and_concat(feature_maps: list[torch.Tensor]) -> torch.Tensor:
    """3D adaptive average pooling of each (N, C_i, D, H, W) map to (N, C_i), concatenated to (N, sum C_i)."""
    return torch.cat([F.adaptive_avg_pool3d(level, 1).flatten(1) for level in feature_maps], dim=1)


def probe_features(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled multi-scale features for probes: (N, in_channels, D, H, W) -> (N, F).

    Every map of ``encoder.probe_feature_maps`` (:class:`SwinEncoder`: the five ``swinViT`` stages;
    :class:`UNetEncoder`: the five levels) pooled and concatenated by :func:`pool_and_concat`; an encoder
    without that method gives its own pooled embedding ``encoder(x)``.
    """
    maps = getattr(encoder, "probe_feature_maps", None)
    return pool_and_concat(maps(x)) if maps is not None else encoder(x)


class SwinEncoder(nn.Module):
    """The encoder path of MONAI's ``SwinUNETR``, with ``SwinUNETR``'s parameter names.

    ``state_dict()`` therefore loads into ``SwinUNETR(in_channels, out_channels, feature_size, ...)``
    unchanged (``swinViT.*``, plus ``encoder1/2/3/4/10.*`` when ``multiscale``).

    Args:
        in_channels: input channels.
        feature_size: SwinUNETR's feature size (48 for Swin-B as in the paper).
        window_size: attention window.
        depths: blocks per stage.
        num_heads: attention heads per stage.
        use_checkpoint: gradient checkpointing inside the Swin blocks.
        use_v2: SwinUNETR-v2 residual convolution blocks.
        multiscale: also keep SwinUNETR's ``encoder1/2/3/4/10`` blocks and return their five outputs
            (the author code's 24·feature_size pooled embedding, 1152-d for 48); otherwise return the
            last Swin stage only (16·feature_size channels, the CVPR head).
        attention: ``"sdpa"`` (window attention through ``scaled_dot_product_attention`` with cached
            shifted-window masks, :mod:`voco_components.attention`) or ``"monai"`` (MONAI's own); the
            same function, parameters and state dict either way.

    Forward: (N, in_channels, D, H, W), each of D, H, W divisible by 32 -> pooled embedding (N, out_channels):
    every returned feature map is 3D-adaptive-average-pooled to one vector and the vectors are concatenated.
    """

    def __init__(
        self,
        in_channels: int = 1,
        feature_size: int = 48,
        window_size: int | Sequence[int] = 7,
        depths: Sequence[int] = (2, 2, 2, 2),
        num_heads: Sequence[int] = (3, 6, 12, 24),
        use_checkpoint: bool = False,
        use_v2: bool = False,
        multiscale: bool = False,
        attention: str = "sdpa",
    ) -> None:
        super().__init__()
        full = SwinUNETR(
            in_channels=in_channels,
            out_channels=1,
            feature_size=feature_size,
            window_size=window_size,
            depths=depths,
            num_heads=num_heads,
            use_checkpoint=use_checkpoint,
            use_v2=use_v2,
            spatial_dims=3,
        )
        set_window_attention(full, attention)
        self.normalize = full.normalize
        self.swinViT = full.swinViT  # noqa: N815 (SwinUNETR's attribute name)
        self.multiscale = multiscale
        if multiscale:
            self.encoder1, self.encoder2, self.encoder3 = full.encoder1, full.encoder2, full.encoder3
            self.encoder4, self.encoder10 = full.encoder4, full.encoder10
            self.out_channels = 24 * feature_size
        else:
            self.out_channels = 16 * feature_size

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, in_channels, D, H, W) -> the feature maps that are pooled: one, or five when ``multiscale``."""
        if self.multiscale and self.training and math.prod(s // 32 for s in x.shape[2:]) < 2:
            raise ValueError(
                f"the multiscale embedding (the official variant) cannot train on crops of {tuple(x.shape[2:])}: its "
                "deepest block instance-normalises the 1/32-scale map, which must hold more than one voxel. "
                "Use a roi_size of 64 on at least one axis, or the paper variant."
            )
        hidden = self.swinViT(x, self.normalize)
        if not self.multiscale:
            return [hidden[4]]
        return [
            self.encoder1(x),
            self.encoder2(hidden[0]),
            self.encoder3(hidden[1]),
            self.encoder4(hidden[2]),
            self.encoder10(hidden[4]),
        ]

    def probe_feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, in_channels, D, H, W) -> the five ``swinViT`` hidden states, from the patch embedding to the deepest."""
        return list(self.swinViT(x, self.normalize))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_and_concat(self.feature_maps(x))


class SwinClassifier(SwinEncoder):
    """A volume classifier: SwinUNETR's encoder, 3D global average pooling, dropout and a linear head.

    The encoder tensors keep SwinUNETR's names (``swinViT.*``), so a VoCo export or a SwinUNETR
    self-supervised checkpoint loads into it with :func:`voco_components.weights.load_pretrained`;
    the head adds ``head.weight`` (num_classes, out_channels) and ``head.bias`` (num_classes,).

    The head starts at zero, so the first logits are equal for every input and the first gradients
    move the head towards features that separate the classes. A randomly initialised head instead
    starts with logits that vary from volume to volume independently of the labels, and the quickest
    way for the optimiser to reduce the loss is then to make the pooled (layer-normalised) features
    constant: fine-tuning collapsed to predicting the class prior within a few steps.

    Args:
        num_classes: number of classes.
        in_channels: input channels.
        feature_size: SwinUNETR's feature size (48 for Swin-B as in the paper).
        window_size: attention window.
        dropout: dropout probability on the pooled embedding before the head.
        encoder_kwargs: other :class:`SwinEncoder` arguments (``depths``, ``num_heads``,
            ``use_checkpoint``, ``use_v2``, ``multiscale``, ``attention``).

    Forward: (N, in_channels, D, H, W), each of D, H, W divisible by 32 -> logits (N, num_classes).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        feature_size: int = 48,
        window_size: int | Sequence[int] = 7,
        dropout: float = 0.0,
        **encoder_kwargs: Any,
    ) -> None:
        super().__init__(in_channels=in_channels, feature_size=feature_size, window_size=window_size, **encoder_kwargs)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.out_channels, num_classes)
        nn.init.zeros_(self.head.weight)
        nn.init.zeros_(self.head.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(super().forward(x)))


class SwinLinearProbe(SwinEncoder):
    """A linear segmentation probe on a frozen SwinUNETR encoder.

    Each of the five hidden states of ``swinViT`` (feature_size, 2, 4, 8 and 16 × feature_size channels at
    1/2 ... 1/32 of the input size) goes through its own 1×1×1 convolution to ``out_channels`` logits, is
    upsampled trilinearly to the input size, and the five maps are added. Because a 1×1×1 convolution and
    trilinear interpolation are both linear, this equals one 1×1×1 convolution of the concatenated
    upsampled hidden states, without holding 31·feature_size channels at full resolution.

    The encoder is frozen (:func:`voco_components.freezing.freeze`) and keeps SwinUNETR's names
    (``swinViT.*``), so :func:`voco_components.weights.load_pretrained` loads a VoCo export into it; the
    heads are ``heads.0`` ... ``heads.4``.

    Args:
        in_channels: input channels.
        out_channels: segmentation classes, background included.
        feature_size: SwinUNETR's feature size.
        window_size: attention window.
        encoder_kwargs: other :class:`SwinEncoder` arguments (``depths``, ``num_heads``, ``use_v2``).

    Forward: (N, in_channels, D, H, W), each divisible by 32 -> logits (N, out_channels, D, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        feature_size: int = 48,
        window_size: int | Sequence[int] = 7,
        **encoder_kwargs: Any,
    ) -> None:
        super().__init__(in_channels=in_channels, feature_size=feature_size, window_size=window_size, **encoder_kwargs)
        widths = [feature_size * 2**level for level in range(5)]
        self.heads = nn.ModuleList(nn.Conv3d(width, out_channels, kernel_size=1) for width in widths)
        freeze(self, ["swinViT"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        hidden = self.swinViT(x, self.normalize)
        size = x.shape[2:]
        return sum(
            F.interpolate(head(level), size=size, mode="trilinear", align_corners=False)
            for head, level in zip(self.heads, hidden, strict=True)
        )


class UNetEncoder(nn.Module):
    """The contracting path of MONAI's ``BasicUNet`` (``conv_0``, ``down_1..4``), with its parameter names.

    Args:
        in_channels: input channels.
        features: BasicUNet's six feature counts; the encoder uses the first five.
        multiscale: return all five levels instead of the deepest one.

    Forward: (N, in_channels, D, H, W), each divisible by 16 -> pooled embedding (N, out_channels).
    """

    def __init__(
        self, in_channels: int = 1, features: Sequence[int] = (32, 32, 64, 128, 256, 32), multiscale: bool = False
    ) -> None:
        super().__init__()
        full = BasicUNet(spatial_dims=3, in_channels=in_channels, out_channels=1, features=features)
        self.conv_0, self.down_1, self.down_2 = full.conv_0, full.down_1, full.down_2
        self.down_3, self.down_4 = full.down_3, full.down_4
        self.multiscale = multiscale
        self.out_channels = sum(features[:5]) if multiscale else features[4]

    def probe_feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, in_channels, D, H, W) -> all five levels, from ``conv_0`` to ``down_4``."""
        levels = [self.conv_0(x)]
        for down in (self.down_1, self.down_2, self.down_3, self.down_4):
            levels.append(down(levels[-1]))
        return levels

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, in_channels, D, H, W) -> the deepest level, or all five when ``multiscale``."""
        levels = self.probe_feature_maps(x)
        return levels if self.multiscale else levels[-1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_and_concat(self.feature_maps(x))


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
            raise TypeError(
                f"batch_stats must be True or False, got {batch_stats!r}; on a bundle command line write "
                "--projector_batch_stats False (a lower-case false arrives as a string)."
            )
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
    :meth:`update_teacher` (see :class:`voco_components.engine.EMATeacherHandler`).

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
