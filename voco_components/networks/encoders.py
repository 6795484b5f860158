"""Encoders with SwinUNETR's key names: the SwinViT encoder with global average pooling (3D volumes or 2D images),
its classifier and linear-probe heads, two CNN encoders (a small U-Net's contracting path, and ResNet-18 with
torchvision's names) with their classifiers, and the pooled multi-scale features of the probes."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from monai.networks.nets import BasicUNet, ResNet, SwinUNETR
from torch import nn

from voco_components.networks.attention import set_window_attention
from voco_components.networks.freezing import freeze

__all__ = [
    "SWIN_ENCODER_BLOCKS",
    "pool_and_concat",
    "probe_features",
    "SwinEncoder",
    "SwinClassifier",
    "SwinLinearProbe",
    "UNetEncoder",
    "UNetClassifier",
    "ResNet18Encoder",
    "ResNet18Classifier",
]

SWIN_ENCODER_BLOCKS = ("swinViT", "encoder1", "encoder2", "encoder3", "encoder4", "encoder10")
"""The encoder modules of MONAI's ``SwinUNETR`` (and of :class:`SwinEncoder` when ``multiscale``): the Swin
transformer and the five residual convolution blocks on the input and on its hidden states 0, 1, 2 and 4."""


def pool_and_concat(feature_maps: list[torch.Tensor]) -> torch.Tensor:
    """Adaptive average pooling of each (N, C_i, D, H, W) map (or 2D (N, C_i, H, W) map) to (N, C_i), concatenated
    to (N, sum C_i)."""
    return torch.cat([_global_average(level) for level in feature_maps], dim=1)


def _global_average(level: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) with 2 or 3 spatial axes -> (N, C): the mean over the spatial axes."""
    if level.ndim == 5:
        return F.adaptive_avg_pool3d(level, 1).flatten(1)
    if level.ndim == 4:
        return F.adaptive_avg_pool2d(level, 1).flatten(1)
    raise ValueError(f"feature maps must be (N, C, D, H, W) or (N, C, H, W), got {tuple(level.shape)}.")


def probe_features(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Pooled multi-scale features for probes: (N, in_channels, *spatial) -> (N, F).

    Every map of ``encoder.probe_feature_maps`` (:class:`SwinEncoder`: the five ``swinViT`` stages;
    :class:`UNetEncoder` and :class:`ResNet18Encoder`: their five levels) pooled and concatenated by
    :func:`pool_and_concat`; an encoder without that method gives its own pooled embedding ``encoder(x)``.
    """
    maps = getattr(encoder, "probe_feature_maps", None)
    return pool_and_concat(maps(x)) if maps is not None else encoder(x)


class SwinEncoder(nn.Module):
    """The encoder path of MONAI's ``SwinUNETR``, with ``SwinUNETR``'s parameter names, for volumes or images.

    ``state_dict()`` therefore loads into ``SwinUNETR(in_channels, out_channels, feature_size, ...,
    spatial_dims=spatial_dims)`` unchanged (``swinViT.*``, plus ``encoder1/2/3/4/10.*`` when ``multiscale``).

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
        spatial_dims: 3 for volumes, 2 for images (radiographs): SwinUNETR's own ``spatial_dims``.

    Forward: (N, in_channels, D, H, W), each of D, H, W divisible by 32 (or (N, in_channels, H, W) when
    ``spatial_dims`` is 2) -> pooled embedding (N, out_channels): every returned feature map is
    adaptive-average-pooled to one vector and the vectors are concatenated.
    """

    encoder_prefixes: tuple[str, ...] = ("swinViT.",)
    """The state-dict prefixes of the pretrained encoder (what :func:`~voco_components.networks.load_pretrained`
    counts when it checks how much of the encoder a checkpoint filled)."""

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
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        if spatial_dims not in (2, 3):
            raise ValueError(f"spatial_dims must be 2 (images) or 3 (volumes), got {spatial_dims!r}.")
        full = SwinUNETR(
            in_channels=in_channels,
            out_channels=1,
            feature_size=feature_size,
            window_size=window_size,
            depths=depths,
            num_heads=num_heads,
            use_checkpoint=use_checkpoint,
            use_v2=use_v2,
            spatial_dims=spatial_dims,
        )
        self.spatial_dims = spatial_dims
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
        """(N, in_channels, *spatial) -> the feature maps that are pooled: one, or five when ``multiscale``."""
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
        """(N, in_channels, *spatial) -> the five ``swinViT`` hidden states, from the patch embedding to the deepest."""
        return list(self.swinViT(x, self.normalize))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_and_concat(self.feature_maps(x))


def _linear_head(in_features: int, num_classes: int, init_std: float) -> nn.Linear:
    """A classifier's linear head: weights from N(0, init_std²), or zero when ``init_std`` is 0; bias zero."""
    if init_std < 0:
        raise ValueError(f"head_init_std must be 0 or more, got {init_std}.")
    head = nn.Linear(in_features, num_classes)
    if init_std > 0:
        nn.init.normal_(head.weight, std=init_std)
    else:
        nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


class _ClassifierHead:
    """Dropout and a linear head (:func:`_linear_head`) on the pooled embedding of the encoder a classifier extends:
    ``forward`` gives (N, num_classes) logits."""

    out_channels: int

    def _add_head(self, num_classes: int, dropout: float, head_init_std: float) -> None:
        self.dropout = nn.Dropout(dropout)
        self.head = _linear_head(self.out_channels, num_classes, head_init_std)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.dropout(super().forward(x)))


class _PooledLevels:
    """The embedding of a CNN encoder whose ``probe_feature_maps`` gives its levels: the deepest level, or all of
    them when ``multiscale``, each average-pooled and concatenated."""

    multiscale: bool

    def feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, in_channels, *spatial) -> the deepest level, or every level when ``multiscale``."""
        levels = self.probe_feature_maps(x)
        return levels if self.multiscale else levels[-1:]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pool_and_concat(self.feature_maps(x))


class SwinClassifier(_ClassifierHead, SwinEncoder):
    """A volume (or image) classifier: SwinUNETR's encoder, global average pooling, dropout and a linear head.

    The encoder tensors keep SwinUNETR's names (``swinViT.*``), so a VoCo export or a SwinUNETR
    self-supervised checkpoint loads into it with :func:`voco_components.networks.weights.load_pretrained`;
    the head adds ``head.weight`` (num_classes, out_channels) and ``head.bias`` (num_classes,).

    The head starts at zero by default, so the first logits are equal for every input and the first gradients
    move the head towards features that separate the classes. A head with PyTorch's default initialisation
    instead starts with logits that vary from volume to volume independently of the labels, and the quickest
    way for the optimiser to reduce the loss is then to make the pooled (layer-normalised) features
    constant: fine-tuning collapsed to predicting the class prior within a few steps. ``head_init_std`` > 0
    starts the head weights from N(0, head_init_std²) instead: on the 2D ChestX-ray14 demo, a zero head left
    the encoder's first AdamW steps without a gradient to follow (each parameter still moves by about the
    learning rate), and the network did not even fit 16 training radiographs in 120 full-batch steps, while
    a head of standard deviation 0.01 fitted them (see ``bundles/voco_cxr14_cls/docs/README.md``).

    Args:
        num_classes: number of classes.
        in_channels: input channels.
        feature_size: SwinUNETR's feature size (48 for Swin-B as in the paper).
        window_size: attention window.
        dropout: dropout probability on the pooled embedding before the head.
        head_init_std: standard deviation of the head's initial weights; 0 (default) starts them at zero.
        encoder_kwargs: other :class:`SwinEncoder` arguments (``depths``, ``num_heads``,
            ``use_checkpoint``, ``use_v2``, ``multiscale``, ``attention``, ``spatial_dims``: 2 for radiographs).

    Forward: (N, in_channels, D, H, W), each of D, H, W divisible by 32 (or (N, in_channels, H, W) in 2D)
    -> logits (N, num_classes).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        feature_size: int = 48,
        window_size: int | Sequence[int] = 7,
        dropout: float = 0.0,
        head_init_std: float = 0.0,
        **encoder_kwargs: Any,
    ) -> None:
        super().__init__(in_channels=in_channels, feature_size=feature_size, window_size=window_size, **encoder_kwargs)
        self._add_head(num_classes, dropout, head_init_std)


class SwinLinearProbe(SwinEncoder):
    """A linear segmentation probe on a frozen SwinUNETR encoder.

    Each of the five hidden states of ``swinViT`` (feature_size, 2, 4, 8 and 16 × feature_size channels at
    1/2 ... 1/32 of the input size) goes through its own 1×1×1 convolution to ``out_channels`` logits, is
    upsampled trilinearly to the input size, and the five maps are added. Because a 1×1×1 convolution and
    trilinear interpolation are both linear, this equals one 1×1×1 convolution of the concatenated
    upsampled hidden states, without holding 31·feature_size channels at full resolution.

    The encoder is frozen (:func:`voco_components.networks.freezing.freeze`) and keeps SwinUNETR's names
    (``swinViT.*``), so :func:`voco_components.networks.weights.load_pretrained` loads a VoCo export into it; the
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


class UNetEncoder(_PooledLevels, nn.Module):
    """The contracting path of MONAI's ``BasicUNet`` (``conv_0``, ``down_1..4``), with its parameter names.

    Args:
        in_channels: input channels.
        features: BasicUNet's six feature counts; the encoder uses the first five.
        multiscale: return all five levels instead of the deepest one.
        spatial_dims: 3 for volumes, 2 for images.

    Forward: (N, in_channels, *spatial), each axis divisible by 16 -> pooled embedding (N, out_channels).
    """

    encoder_prefixes: tuple[str, ...] = ("conv_0.", "down_1.", "down_2.", "down_3.", "down_4.")
    """The state-dict prefixes of the pretrained encoder (BasicUNet's contracting path)."""

    def __init__(
        self,
        in_channels: int = 1,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        multiscale: bool = False,
        spatial_dims: int = 3,
    ) -> None:
        super().__init__()
        full = BasicUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=1, features=features)
        self.conv_0, self.down_1, self.down_2 = full.conv_0, full.down_1, full.down_2
        self.down_3, self.down_4 = full.down_3, full.down_4
        self.multiscale = multiscale
        self.out_channels = sum(features[:5]) if multiscale else features[4]

    def probe_feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, in_channels, *spatial) -> all five levels, from ``conv_0`` to ``down_4``."""
        levels = [self.conv_0(x)]
        for down in (self.down_1, self.down_2, self.down_3, self.down_4):
            levels.append(down(levels[-1]))
        return levels


class UNetClassifier(_ClassifierHead, UNetEncoder):
    """An image (or volume) classifier on a CNN: BasicUNet's contracting path (:class:`UNetEncoder`), global average
    pooling, dropout and a linear head (:func:`_linear_head`), the CNN counterpart of :class:`SwinClassifier`.

    A :class:`UNetEncoder` export (``conv_0.*``, ``down_1..4.*``) loads into it by name; the head adds
    ``head.weight`` (num_classes, out_channels) and ``head.bias``.

    Args:
        num_classes: number of classes.
        in_channels: input channels.
        features: BasicUNet's six feature counts; the encoder uses the first five.
        spatial_dims: 2 for images (radiographs), 3 for volumes.
        dropout: dropout probability on the pooled embedding before the head.
        head_init_std: standard deviation of the head's initial weights; 0 starts them at zero.

    Forward: (N, in_channels, *spatial), each axis divisible by 16 -> logits (N, num_classes).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        features: Sequence[int] = (32, 32, 64, 128, 256, 32),
        spatial_dims: int = 3,
        dropout: float = 0.0,
        head_init_std: float = 0.0,
    ) -> None:
        super().__init__(in_channels=in_channels, features=features, spatial_dims=spatial_dims)
        self._add_head(num_classes, dropout, head_init_std)


class ResNet18Encoder(_PooledLevels, ResNet):
    """ResNet-18 with torchvision's architecture and parameter names, the CNN of PCRLv2's setting (the paper's 2D
    run), built from MONAI's ``ResNet`` and returning a pooled embedding.

    A 7×7 stride-2 stem, 3×3 stride-2 max pooling, four stages of two basic blocks (64, 128, 256, 512 channels,
    strides 1, 2, 2, 2) with 1×1 projection shortcuts where the shape changes. The names (``conv1``, ``bn1``,
    ``layer1..4.{0,1}.{conv1,bn1,conv2,bn2,downsample.0,downsample.1}``) are torchvision's, so a torchvision ResNet-18
    state dict without ``fc.*`` loads by name (with ``in_channels=3``, or through the loader's channel policy).

    Args:
        in_channels: input channels.
        multiscale: return all five levels (the stem and ``layer1..4``) instead of the deepest one.
        spatial_dims: 2 for images, 3 for volumes.

    Forward: (N, in_channels, *spatial), each axis divisible by 32 -> pooled embedding (N, out_channels): 512 (the
    deepest level), or 1024 when ``multiscale``.
    """

    encoder_prefixes: tuple[str, ...] = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
    """The state-dict prefixes of the pretrained encoder (the whole ResNet; it has no classifier of its own)."""

    level_channels: tuple[int, ...] = (64, 64, 128, 256, 512)
    """The channels of the five levels: the stem and ``layer1..4``."""

    def __init__(self, in_channels: int = 1, multiscale: bool = False, spatial_dims: int = 2) -> None:
        super().__init__(
            block="basic",
            layers=[2, 2, 2, 2],
            block_inplanes=[64, 128, 256, 512],
            spatial_dims=spatial_dims,
            n_input_channels=in_channels,
            conv1_t_size=7,
            conv1_t_stride=2,
            shortcut_type="B",
            bias_downsample=False,
            feed_forward=False,
        )
        self.multiscale = multiscale
        self.out_channels = sum(self.level_channels) if multiscale else self.level_channels[-1]

    def probe_feature_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """(N, in_channels, *spatial) -> all five levels: the stem (1/2 of the input size), ``layer1..4`` (1/4 to
        1/32)."""
        levels = [self.act(self.bn1(self.conv1(x)))]
        levels.append(self.layer1(self.maxpool(levels[-1])))
        for layer in (self.layer2, self.layer3, self.layer4):
            levels.append(layer(levels[-1]))
        return levels


class ResNet18Classifier(_ClassifierHead, ResNet18Encoder):
    """An image (or volume) classifier on ResNet-18 (:class:`ResNet18Encoder`): global average pooling, dropout and a
    linear head (:func:`_linear_head`), as :class:`SwinClassifier` and :class:`UNetClassifier`.

    A :class:`ResNet18Encoder` export (``conv1.*``, ``bn1.*``, ``layer1..4.*``) loads into it by name; the head adds
    ``head.weight`` (num_classes, 512) and ``head.bias``.

    Args:
        num_classes: number of classes.
        in_channels: input channels.
        spatial_dims: 2 for images (radiographs), 3 for volumes.
        dropout: dropout probability on the pooled embedding before the head.
        head_init_std: standard deviation of the head's initial weights; 0 starts them at zero.

    Forward: (N, in_channels, *spatial), each axis divisible by 32 -> logits (N, num_classes).
    """

    def __init__(
        self,
        num_classes: int,
        in_channels: int = 1,
        spatial_dims: int = 2,
        dropout: float = 0.0,
        head_init_std: float = 0.0,
    ) -> None:
        super().__init__(in_channels=in_channels, spatial_dims=spatial_dims)
        self._add_head(num_classes, dropout, head_init_std)
