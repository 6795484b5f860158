"""Load pretrained VoCo / SwinUNETR self-supervised weights into a network, loudly.

The silent ``load_state_dict(strict=False)`` that loads nothing is the most common way pretrained
weights get lost. :func:`load_pretrained` normalises the checkpoint's layout and key names, adapts
the input channels, reports what loaded and what did not (per encoder block), and fails when too
little of the encoder loaded. It takes a file, or the name of a published encoder
(:mod:`voco_components.networks.pretrained_registry`), which it downloads once into a cache.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from voco_components.networks.encoders import SWIN_ENCODER_BLOCKS
from voco_components.networks.pretrained_registry import (
    check_architecture,
    fetch_pretrained,
    find_pretrained,
    pretrained_entries,
    swin_architecture,
)

__all__ = ["LoadReport", "normalise_state_dict", "adapt_input_channels", "load_pretrained"]

logger = logging.getLogger(__name__)

WRAPPER_KEYS = ("state_dict", "network_weights", "model", "net", "network", "student")
STRIP_PREFIXES = ("module.", "student.", "teacher.", "backbone.")
HEAD_PREFIXES = ("student.", "teacher.")
RENAMES = (("swin_vit", "swinViT"), (".mlp.fc1.", ".mlp.linear1."), (".mlp.fc2.", ".mlp.linear2."))
BARE_SWIN = re.compile(r"(patch_embed|layers[1-4]c?)\.")
"""Top-level names of MONAI's ``SwinTransformer``: a checkpoint of the Swin transformer alone (SwinUNETR's
self-supervised ``model_swinvit.pt``) gets them under ``swinViT.``."""
CHANNEL_POLICIES = ("repeat", "reinit")


@dataclass
class LoadReport:
    """What :func:`load_pretrained` did. Key lists are sorted; ``encoder_fraction`` is in [0, 1].

    ``unexpected``: checkpoint tensors the network has no place for (e.g. projection heads); ``skipped``:
    checkpoint tensors the network has but that were left out on purpose (a published encoder loads its
    encoder blocks only, not e.g. a supervised decoder); ``blocks``: for each of SwinUNETR's encoder modules
    (:data:`~voco_components.networks.encoders.SWIN_ENCODER_BLOCKS`) the network has, (tensors loaded, tensors).
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    shape_mismatched: list[str] = field(default_factory=list)
    channel_adapted: list[str] = field(default_factory=list)
    encoder_fraction: float = 0.0
    blocks: dict[str, tuple[int, int]] = field(default_factory=dict)

    def summary(self) -> str:
        blocks = ", ".join(f"{name} {done}/{total}" for name, (done, total) in self.blocks.items())
        return (
            f"{self.source}: loaded {len(self.loaded)} tensors ({100 * self.encoder_fraction:.1f}% of the encoder), "
            f"{len(self.channel_adapted)} with adapted input channels; missing {len(self.missing)}, "
            f"unexpected {len(self.unexpected)}, shape-mismatched {len(self.shape_mismatched)}, "
            f"skipped {len(self.skipped)}; encoder blocks loaded: {blocks or 'none'}"
        )


def normalise_state_dict(
    checkpoint: Mapping, strip_prefixes: Sequence[str] = STRIP_PREFIXES
) -> dict[str, torch.Tensor]:
    """Unwrap and rename a checkpoint into plain SwinUNETR-style keys.

    Unwraps nested ``state_dict`` / ``network_weights`` / ``model`` / ``net`` / ``network`` / ``student``
    entries, drops the ``teacher.*`` half of a student/teacher pair (the student is kept), strips the
    ``module.``, ``student.``, ``teacher.`` and ``backbone.`` prefixes (repeatedly, in any order) and renames
    ``swin_vit`` to ``swinViT``. Non-tensor entries are dropped.

    Published layouts: the VoCo authors' training state (``backbone.swinViT.*``, ``backbone.encoder1.*`` ...,
    with ``student.*`` and ``teacher.*`` projection heads beside the backbone) keeps its backbone and both
    heads under their own names (``student.layer1.0.weight``), so that they show as unexpected rather than
    as encoder tensors; a checkpoint of the Swin transformer alone (SwinUNETR's self-supervised
    ``model_swinvit.pt``: ``module.patch_embed.*``, ``module.layers1.0.blocks.0.mlp.fc1.*``) gets the
    ``swinViT.`` prefix, with ``mlp.fc1`` / ``mlp.fc2`` renamed to MONAI's ``mlp.linear1`` / ``mlp.linear2``.
    """
    state: Mapping = checkpoint
    while True:
        nested = next((state[k] for k in WRAPPER_KEYS if isinstance(state.get(k), Mapping)), None)
        if nested is None:
            break
        state = nested
    keys = list(state)
    bare = [k.removeprefix("module.") for k in keys]
    heads_beside_backbone = any(k.startswith("backbone.") for k in bare)
    if heads_beside_backbone:
        strip_prefixes = [p for p in strip_prefixes if p not in HEAD_PREFIXES]
    has_student = not heads_beside_backbone and any(k.startswith("student.") for k in bare)
    result: dict[str, torch.Tensor] = {}
    for key, short in zip(keys, bare, strict=True):
        value = state[key]
        if not isinstance(value, torch.Tensor):
            continue
        if has_student and short.startswith("teacher."):
            continue
        name = key
        stripped = True
        while stripped:
            stripped = False
            for prefix in strip_prefixes:
                if name.startswith(prefix):
                    name, stripped = name[len(prefix) :], True
        for old, new in RENAMES:
            name = name.replace(old, new)
        if BARE_SWIN.match(name):
            name = f"swinViT.{name}"
        result[name] = value
    return result


def adapt_input_channels(weight: torch.Tensor, channels: int, policy: str) -> torch.Tensor | None:
    """Adapt a convolution weight (C_out, C_in, ...) of a first layer to ``channels`` inputs.

    ``repeat``: tile the pretrained filters over the new channels and rescale by C_in / channels, so
    that an input repeated on every channel gives the original activation. ``reinit``: return None
    (keep the network's own initialisation).
    """
    if policy not in CHANNEL_POLICIES:
        raise ValueError(f"in_channels policy must be one of {CHANNEL_POLICIES}, got {policy!r}.")
    if policy == "reinit":
        return None
    source = weight.shape[1]
    repeats = -(-channels // source)
    tiled = weight.repeat(1, repeats, *([1] * (weight.ndim - 2)))[:, :channels]
    return tiled * (source / channels)


def load_pretrained(
    network: nn.Module,
    path: str | Path | None,
    min_encoder_fraction: float = 0.9,
    encoder_prefixes: Sequence[str] | None = None,
    in_channels_policy: str = "repeat",
    strip_prefixes: Sequence[str] = STRIP_PREFIXES,
    weights_cache: str | Path | None = None,
    include_prefixes: Sequence[str] | None = None,
) -> LoadReport | None:
    """Load the pretrained tensors of ``path`` into ``network`` where names and shapes match.

    Args:
        network: e.g. ``SwinUNETR``, or any module with SwinUNETR's encoder names.
        path: a VoCo export (``models/model.pt``), a VoCo training or public VoCo / SwinUNETR
            self-supervised checkpoint, or the name of a published encoder (``voco_b``, ``swinunetr_ssl``, ...:
            :data:`~voco_components.networks.pretrained_registry.PRETRAINED_WEIGHTS`); None loads nothing (the
            from-scratch baseline) and returns None. A name first checks that ``network`` has the SwinUNETR settings the
            weights need (a ValueError naming each difference), then downloads the file once into
            ``weights_cache`` and loads the encoder blocks the file holds, which are then what
            ``min_encoder_fraction`` counts (``encoder_prefixes`` and ``include_prefixes`` are ignored).
        min_encoder_fraction: fail when fewer than this fraction of the network's encoder tensors
            (names starting with ``encoder_prefixes``) loaded.
        encoder_prefixes: which of the network's tensors count as the encoder; None: the network's own
            ``encoder_prefixes`` (``swinViT.`` for the Swin encoders; BasicUNet's ``conv_0.`` and ``down_1..4.`` for
            :class:`~voco_components.networks.UNetEncoder`, ``conv1.``, ``bn1.`` and ``layer1..4.`` for
            :class:`~voco_components.networks.ResNet18Encoder`, and their classifiers), else ``swinViT.``.
        in_channels_policy: for a first-layer weight whose only mismatch is the input-channel axis
            (e.g. 4-channel MRI from a 1-channel CT checkpoint): ``repeat`` or ``reinit``, see
            :func:`adapt_input_channels`.
        strip_prefixes: key prefixes removed from the checkpoint.
        weights_cache: the download folder of named encoders; None:
            :func:`~voco_components.networks.pretrained_registry.default_weights_cache`.
        include_prefixes: load only tensors whose names start with one of these; the network's other tensors
            that the checkpoint holds are reported as ``skipped``. None loads every match.

    Returns:
        the :class:`LoadReport`, also logged.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: less than ``min_encoder_fraction`` of the encoder loaded, or a named encoder needs other
            network settings, or its download fails the hash check.
    """
    if path is None:
        logger.info("pretrained is null: training from scratch.")
        return None
    entry = find_pretrained(path)
    if entry is not None:
        check_architecture(entry, **swin_architecture(network))
        path = fetch_pretrained(entry, weights_cache)
        encoder_prefixes = include_prefixes = tuple(f"{block}." for block in entry.blocks)
    if encoder_prefixes is None:
        encoder_prefixes = getattr(network, "encoder_prefixes", ("swinViT.",))
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: pretrained checkpoint not found. Run the voco_pretrain bundle first (its training "
            "exports models/model.pt), point `pretrained` at another checkpoint or name a published encoder "
            f"({', '.join(sorted(pretrained_entries()))}), or set `--pretrained null` to train from scratch."
        )
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    source = normalise_state_dict(checkpoint, strip_prefixes)
    target = network.state_dict()
    report = LoadReport(source=f"{entry.name} ({path})" if entry is not None else str(path))
    update: dict[str, torch.Tensor] = {}
    for name, value in source.items():
        if name not in target:
            report.unexpected.append(name)
            continue
        if include_prefixes is not None and not name.startswith(tuple(include_prefixes)):
            report.skipped.append(name)
            continue
        wanted = target[name].shape
        if value.shape == wanted:
            update[name] = value
        elif value.ndim >= 3 and value.shape[0] == wanted[0] and value.shape[2:] == wanted[2:]:
            adapted = adapt_input_channels(value, wanted[1], in_channels_policy)
            if adapted is None:
                report.shape_mismatched.append(name)
            else:
                update[name] = adapted
                report.channel_adapted.append(name)
        else:
            report.shape_mismatched.append(name)
    network.load_state_dict(update, strict=False)
    report.loaded = sorted(update)
    report.missing = sorted(set(target) - set(update))
    report.unexpected.sort()
    report.skipped.sort()
    report.shape_mismatched.sort()
    encoder = [k for k in target if k.startswith(tuple(encoder_prefixes))]
    report.encoder_fraction = sum(k in update for k in encoder) / len(encoder) if encoder else 0.0
    for block in SWIN_ENCODER_BLOCKS:
        tensors = [k for k in target if k.startswith(f"{block}.")]
        if tensors:
            report.blocks[block] = (sum(k in update for k in tensors), len(tensors))
    logger.info(report.summary())
    if report.shape_mismatched:
        logger.warning(f"shape-mismatched tensors left at their initialisation: {report.shape_mismatched}")
    if report.unexpected:
        logger.info(f"checkpoint tensors the network has no place for: {report.unexpected}")
    if report.skipped:
        logger.info(f"checkpoint tensors left out (outside {list(include_prefixes or [])}): {report.skipped}")
    if report.encoder_fraction < min_encoder_fraction:
        raise ValueError(
            f"{report.summary()}. Only {100 * report.encoder_fraction:.1f}% of the encoder tensors "
            f"({', '.join(encoder_prefixes)}) loaded, below the required {100 * min_encoder_fraction:.0f}%: "
            "this checkpoint does not fit this network (wrong file, architecture or feature_size?)."
        )
    return report
