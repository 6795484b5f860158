"""Published pretrained encoders by name: where each file is, its hash, and the SwinUNETR it needs; a download cache.

``load_pretrained(network, "voco_b")`` (:mod:`voco_components.networks.weights`) looks the name up here, checks
that ``network`` has the architecture the weights need (:func:`check_architecture`), downloads the file once
into the weights cache (:func:`fetch_pretrained`) and loads it. The built-in names are
:data:`PRETRAINED_WEIGHTS`; :func:`register` adds one in Python, and a JSON file named by the environment
variable ``VOCO_WEIGHTS_REGISTRY`` (a list of objects with :class:`PretrainedWeights`' fields) adds or replaces
names for every process, e.g. a mirror of the published files or a site's own encoders.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from monai.apps.utils import download_url
from torch import nn

from voco_components.networks.encoders import SWIN_ENCODER_BLOCKS
from voco_components.utils import unwrap_ddp

__all__ = [
    "WEIGHTS_CACHE_ENV",
    "WEIGHTS_REGISTRY_ENV",
    "HASH_TYPES",
    "PretrainedWeights",
    "PRETRAINED_WEIGHTS",
    "register",
    "pretrained_entries",
    "find_pretrained",
    "default_weights_cache",
    "swin_architecture",
    "check_architecture",
    "fetch_pretrained",
]

logger = logging.getLogger(__name__)

WEIGHTS_CACHE_ENV = "VOCO_WEIGHTS_CACHE"
"""Environment variable: the weights cache folder, instead of ``$XDG_CACHE_HOME/voco_components/weights``."""
WEIGHTS_REGISTRY_ENV = "VOCO_WEIGHTS_REGISTRY"
"""Environment variable: a JSON file of further registry entries (a list of :class:`PretrainedWeights` fields)."""
HASH_TYPES = ("md5", "sha1", "sha256", "sha512")
NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]*")


@dataclass(frozen=True)
class PretrainedWeights:
    """One published checkpoint and the network it fits.

    Args:
        name: the registry name, lower case (``voco_b``); what ``--pretrained`` takes.
        url: where the file is downloaded from; its last path component is the file name in the cache.
        feature_size: SwinUNETR's ``feature_size`` the weights were trained with.
        use_v2: SwinUNETR's ``use_v2`` (a residual convolution block before each Swin stage).
        description: what the weights are, in a line.
        source: who published them and under which terms.
        hash_val: the file's digest, or None where none is published (the download is then not verified).
        hash_type: one of :data:`HASH_TYPES`.
        hash_source: where ``hash_val`` comes from.
        window_size: the Swin attention window (its relative-position tables depend on it).
        in_channels: input channels of the first layers (1 for CT); another count is adapted by the loader.
        blocks: which of SwinUNETR's encoder modules (:data:`SWIN_ENCODER_BLOCKS`) the file holds; exactly
            these are loaded, and the encoder fraction the loader requires is counted over them.
    """

    name: str
    url: str
    feature_size: int
    use_v2: bool
    description: str
    source: str
    hash_val: str | None = None
    hash_type: str = "sha256"
    hash_source: str = ""
    window_size: int = 7
    in_channels: int = 1
    blocks: tuple[str, ...] = SWIN_ENCODER_BLOCKS

    def __post_init__(self) -> None:
        problems = []
        if not NAME_PATTERN.fullmatch(self.name):
            problems.append(f"name must be lower-case letters, digits and '_' from a letter on, got {self.name!r}")
        if urlparse(self.url).scheme not in ("http", "https") or not self.file_name:
            problems.append(f"url must be an http(s) address ending in a file name, got {self.url!r}")
        if self.hash_type not in HASH_TYPES:
            problems.append(f"hash_type must be one of {HASH_TYPES}, got {self.hash_type!r}")
        unknown = [b for b in self.blocks if b not in SWIN_ENCODER_BLOCKS]
        if unknown or not self.blocks:
            problems.append(f"blocks must be a non-empty subset of {SWIN_ENCODER_BLOCKS}, got {list(self.blocks)}")
        if problems:
            raise ValueError(f"pretrained weights {self.name!r}: " + "; ".join(problems) + ".")
        object.__setattr__(self, "blocks", tuple(self.blocks))
        if self.hash_val is not None:
            object.__setattr__(self, "hash_val", self.hash_val.lower())

    @property
    def file_name(self) -> str:
        """The file's name in the cache: the last component of the URL's path."""
        return urlparse(self.url).path.rpartition("/")[2]

    @property
    def architecture(self) -> dict[str, Any]:
        """The SwinUNETR settings the weights need: ``feature_size``, ``use_v2`` and ``window_size``."""
        return {"feature_size": self.feature_size, "use_v2": self.use_v2, "window_size": self.window_size}


_HF = "https://huggingface.co/Luffy503/VoCo/resolve/main"
_VOCO_SOURCE = (
    "VoCo (Wu, Zhuang and Chen, CVPR 2024) in its authors' large-scale extension (github.com/Luffy03/"
    "Large-Scale-Medical), published by the authors on Hugging Face (Luffy503/VoCo); the terms are those "
    "of that model repository and of the CT collections it was trained on"
)
_EVA_MD5 = "MD5 as listed by the kaiko-ai/eva library for its VoCo backbones; the authors publish no digest"
_VOCO_SSL = "VoCo self-supervised SwinUNETR-{} encoder (swinViT and encoder1-4, 10), pretrained on 160k CTs"
_VOCOMNI = (
    "VoCo omni-supervised SwinUNETR-{} (encoder and decoder trained with labels of 21 classes); the encoder is loaded"
)


def _builtin() -> dict[str, PretrainedWeights]:
    entries = []
    for size, feature_size, md5 in (
        ("B", 48, "f80c4da2f81d700bdae3df188f2057eb"),
        ("L", 96, "795095d1d43ef3808ec4c41798310136"),
        ("H", 192, "76f95a474736b60bf5b8aad94643744d"),
    ):
        entries.append(
            PretrainedWeights(
                name=f"voco_{size.lower()}",
                url=f"{_HF}/VoCo_{size}_SSL_head.pt",
                feature_size=feature_size,
                use_v2=True,
                description=_VOCO_SSL.format(size),
                source=_VOCO_SOURCE,
                hash_val=md5,
                hash_type="md5",
                hash_source=_EVA_MD5,
            )
        )
        entries.append(
            PretrainedWeights(
                name=f"vocomni_{size.lower()}",
                url=f"{_HF}/VoComni_{size}.pt",
                feature_size=feature_size,
                use_v2=True,
                description=_VOCOMNI.format(size),
                source=_VOCO_SOURCE,
            )
        )
    entries.append(
        PretrainedWeights(
            name="swinunetr_ssl",
            url="https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/model_swinvit.pt",
            feature_size=48,
            use_v2=False,
            description="SwinUNETR self-supervised Swin transformer (Tang et al., CVPR 2022), pretrained on 5,050 CTs",
            source=(
                "Project-MONAI (research-contributions SwinUNETR/Pretrain, Apache-2.0), released with "
                "MONAI-extra-test-data 0.8.1"
            ),
            blocks=("swinViT",),
        )
    )
    return {entry.name: entry for entry in entries}


PRETRAINED_WEIGHTS: dict[str, PretrainedWeights] = _builtin()
"""The built-in names: ``voco_b``, ``voco_l``, ``voco_h`` (self-supervised), ``vocomni_b``, ``vocomni_l``,
``vocomni_h`` (omni-supervised) and ``swinunetr_ssl``; :func:`register` adds to it."""


def register(entry: PretrainedWeights, replace: bool = False) -> PretrainedWeights:
    """Add ``entry`` to :data:`PRETRAINED_WEIGHTS` (for this process); an existing name needs ``replace``."""
    if entry.name in PRETRAINED_WEIGHTS and not replace and PRETRAINED_WEIGHTS[entry.name] != entry:
        raise ValueError(f"pretrained weights {entry.name!r} are registered already; replace=True replaces them.")
    PRETRAINED_WEIGHTS[entry.name] = entry
    return entry


def _entries_from_file(path: Path) -> list[PretrainedWeights]:
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} (${WEIGHTS_REGISTRY_ENV}): cannot read a JSON registry: {error}") from error
    if not isinstance(raw, list) or not all(isinstance(item, Mapping) for item in raw):
        raise ValueError(f"{path} (${WEIGHTS_REGISTRY_ENV}): a registry file is a JSON list of objects.")
    known = {f.name for f in fields(PretrainedWeights)}
    entries = []
    for index, item in enumerate(raw):
        unknown = sorted(set(item) - known)
        if unknown:
            raise ValueError(f"{path} (${WEIGHTS_REGISTRY_ENV}): entry {index} has unknown keys {unknown}.")
        try:
            entries.append(PretrainedWeights(**item))
        except (TypeError, ValueError) as error:
            raise ValueError(f"{path} (${WEIGHTS_REGISTRY_ENV}): entry {index}: {error}") from error
    return entries


def pretrained_entries() -> dict[str, PretrainedWeights]:
    """Every known name: :data:`PRETRAINED_WEIGHTS`, then the entries of the ``VOCO_WEIGHTS_REGISTRY`` file."""
    entries = dict(PRETRAINED_WEIGHTS)
    extra = os.environ.get(WEIGHTS_REGISTRY_ENV)
    if extra:
        entries.update({entry.name: entry for entry in _entries_from_file(Path(extra))})
    return entries


def find_pretrained(value: Any) -> PretrainedWeights | None:
    """The entry ``value`` names, or None when it is no registry name (a path, None, ``"null"``)."""
    return pretrained_entries().get(value) if isinstance(value, str) else None


def default_weights_cache() -> Path:
    """``$VOCO_WEIGHTS_CACHE``, else ``$XDG_CACHE_HOME/voco_components/weights`` (``~/.cache/...``)."""
    if os.environ.get(WEIGHTS_CACHE_ENV):
        return Path(os.environ[WEIGHTS_CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "voco_components" / "weights"


def swin_architecture(network: nn.Module) -> dict[str, Any]:
    """``feature_size``, ``use_v2``, ``window_size`` (a 3-tuple) and ``in_channels`` of a network with SwinUNETR's
    ``swinViT`` (``SwinUNETR``, :class:`~voco_components.networks.encoders.SwinEncoder` and its heads)."""
    swin = getattr(unwrap_ddp(network), "swinViT", None)
    if swin is None:
        raise ValueError(
            f"{type(network).__name__} has no `swinViT`: the published encoders load into SwinUNETR's encoder only."
        )
    return {
        "feature_size": int(swin.embed_dim),
        "use_v2": bool(swin.use_v2),
        "window_size": tuple(int(w) for w in swin.window_size),
        "in_channels": int(swin.patch_embed.proj.in_channels),
    }


def _entry(weights: str | PretrainedWeights) -> PretrainedWeights:
    entry = weights if isinstance(weights, PretrainedWeights) else find_pretrained(weights)
    if entry is None:
        raise ValueError(f"{weights!r} is no registered pretrained encoder; known: {sorted(pretrained_entries())}.")
    return entry


def _window(value: int | Sequence[int]) -> tuple[int, ...]:
    return (int(value),) * 3 if isinstance(value, int) else tuple(int(v) for v in value)


def check_architecture(
    weights: str | PretrainedWeights,
    feature_size: int | None = None,
    use_v2: bool | None = None,
    window_size: int | Sequence[int] | None = None,
    in_channels: int | None = None,
) -> PretrainedWeights:
    """Raise a ValueError naming every setting (given, not None) that differs from what ``weights`` needs.

    ``in_channels`` is not an error: the loader adapts the first layers (``pretrained_in_channels``); it is logged.

    Returns:
        the entry.
    """
    entry = _entry(weights)
    given = {"feature_size": feature_size, "use_v2": use_v2, "window_size": window_size}
    wrong = {
        key: value
        for key, value in given.items()
        if value is not None
        and (_window(value) != _window(entry.window_size) if key == "window_size" else value != entry.architecture[key])
    }
    if wrong:
        settings = ", ".join(f"{key} {json.dumps(value)}" for key, value in entry.architecture.items())
        found = ", ".join(f"{key} {json.dumps(value)}" for key, value in wrong.items())
        flags = " ".join(f"--{key} {json.dumps(value)}" for key, value in entry.architecture.items())
        raise ValueError(
            f"pretrained {entry.name!r} ({entry.file_name}) needs SwinUNETR with {settings}; the network has {found}. "
            f"Build the network with the weights' settings: merge the bundle's configs/pretrained/{entry.name}.json "
            f"overlay, or pass {flags}."
        )
    if in_channels is not None and in_channels != entry.in_channels:
        logger.info(
            f"pretrained {entry.name!r} was trained on {entry.in_channels} input channel(s); the network takes "
            f"{in_channels}, so its first layers are adapted by the loader's in_channels policy."
        )
    return entry


def _digest(path: Path, hash_type: str) -> str:
    digest = hashlib.new(hash_type)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch_pretrained(
    weights: str | PretrainedWeights, cache_dir: str | Path | None = None, progress: bool = True
) -> Path:
    """The cached file of ``weights``, downloaded first when absent; its hash is checked where one is known.

    The file is ``<cache_dir>/<file_name>`` (``cache_dir`` None: :func:`default_weights_cache`). A download goes
    through MONAI's ``download_url`` to a temporary name in ``cache_dir``, is hash-checked there and only then
    renamed to the final name, so an interrupted, failed or wrong download never leaves a file at the final
    path; concurrent processes each download to their own temporary name. A file copied into the cache by
    hand (a machine without internet) is used as it is, after the same hash check.

    Raises:
        ValueError: a downloaded or cached file fails the hash check.
        RuntimeError: the download failed (the message says how to pre-fill the cache).
    """
    entry = _entry(weights)
    folder = Path(cache_dir).expanduser() if cache_dir not in (None, "") else default_weights_cache()
    final = folder / entry.file_name
    if final.is_file():
        if entry.hash_val is not None:
            actual = _digest(final, entry.hash_type)
            if actual != entry.hash_val:
                raise ValueError(
                    f"{final}: the cached file of {entry.name!r} has {entry.hash_type} {actual}, expected "
                    f"{entry.hash_val}. Delete it to download it again, or copy the file from {entry.url} there."
                )
        logger.info(f"pretrained {entry.name!r}: using the cached {final}")
        return final
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{entry.file_name}.{secrets.token_hex(6)}.part"
    try:
        logger.info(f"pretrained {entry.name!r}: downloading {entry.url} to {final}")
        try:
            with warnings.catch_warnings():  # the hash is checked below, on the file in the cache folder
                warnings.filterwarnings("ignore", message="No hash value provided")
                download_url(entry.url, partial, hash_val=None, progress=progress)
            if not partial.is_file():
                raise RuntimeError("no file arrived")
        except Exception as error:
            raise RuntimeError(
                f"pretrained {entry.name!r}: downloading {entry.url} failed ({type(error).__name__}: {error}). "
                f"Without internet access, download the file on another machine and copy it to {final} "
                f"(the cache folder is --weights_cache, ${WEIGHTS_CACHE_ENV} or {default_weights_cache()})."
            ) from error
        actual = _digest(partial, entry.hash_type if entry.hash_val is not None else "sha256")
        if entry.hash_val is None:
            logger.warning(
                f"pretrained {entry.name!r}: no published digest, so the download is not verified; its sha256 is "
                f"{actual} (record it to pin the file)."
            )
        elif actual != entry.hash_val:
            raise ValueError(
                f"pretrained {entry.name!r}: the file downloaded from {entry.url} has {entry.hash_type} {actual}, "
                f"expected {entry.hash_val} ({entry.hash_source or 'registry'}); it was discarded, nothing was "
                f"written to {final}."
            )
        os.replace(partial, final)
    finally:
        partial.unlink(missing_ok=True)
    return final
