"""Shared fixtures: paths, small synthetic CT volumes, and tiny overrides for the bundles."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
BUNDLES = REPO / "bundles"


def write_ct(path: Path, shape=(80, 80, 24), spacing=(1.5, 1.5, 5.0), seed: int = 0) -> Path:
    """A CT-like int16 NIfTI: air, a soft-tissue body ellipse, two lungs and a bone, plus noise."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.linspace(-1, 1, s) for s in shape), indexing="ij")
    volume = np.full(shape, -1000.0)
    body = (x / 0.85) ** 2 + (y / 0.7) ** 2 < 1
    volume[body] = 40.0
    for cx in (-0.4, 0.4):
        volume[((x - cx) / 0.3) ** 2 + (y / 0.45) ** 2 < 1] = -800.0
    volume[(x**2 + ((y + 0.55) / 0.12) ** 2 < 0.01) & body] = 700.0
    volume += 20.0 * z + rng.normal(0, 15, size=shape)
    affine = np.diag([*spacing, 1.0])
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(volume.astype(np.int16), affine), str(path))
    return path


@pytest.fixture(scope="session")
def schema_file(tmp_path_factory) -> Path:
    """The Model Zoo metadata schema, copied to a scratch path (verify_metadata then skips the download)."""
    target = tmp_path_factory.mktemp("schema") / "schema.json"
    shutil.copy(SHARED / "schemas" / "meta_schema_20240725.json", target)
    return target
