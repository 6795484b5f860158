"""Derive anatomy label maps for the embedded demo CTs, for the segmentation demo.

Usage: ``python tools/derive_demo_anatomy.py``. For each ``<case>_image.nii.gz`` in
``voco_components/demo_data`` it writes ``<case>_anatomy.nii.gz`` (uint8, same grid and affine):

- 1 lungs: the two largest connected components of air (HU < -400) inside the body (the largest
  component of HU > -500, holes filled slice by slice), after a one-voxel opening.
- 2 bone: HU > 250 inside the body, components of at least 50 voxels.
- 3 soft tissue: the rest of the body.

These are real structures at consistent positions, derived by thresholds, not drawn by a reader:
the airways inside the lungs' components and contrast-enhanced vessels above 250 HU are included.
The two lungs share one class: a 64³ training patch inside a lung looks the same on either side,
and flips swap the sides, so left and right could only be told apart from context a patch lacks.
It also writes ``segmentation_datalist.json`` and refreshes ``sha256.json``. Development tool only.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

DEST = Path(__file__).resolve().parents[1] / "voco_components" / "demo_data"
CASES = ("lung1", "lung2")
CLASSES = ("background", "lungs", "bone", "soft tissue")


def _largest_components(mask: np.ndarray, count: int, min_size: int = 1) -> list[np.ndarray]:
    components, n = ndimage.label(mask)
    sizes = ndimage.sum(mask, components, range(1, n + 1))
    order = [int(i) + 1 for i in np.argsort(sizes)[::-1] if sizes[i] >= min_size]
    return [components == label for label in order[:count]]


def derive_anatomy(hu: np.ndarray) -> np.ndarray:
    """Label map (uint8, same shape) of the lungs (1), bone (2) and other soft tissue (3) of a CT in HU."""
    (body,) = _largest_components(hu > -500, 1)
    body = np.stack([ndimage.binary_fill_holes(body[..., z]) for z in range(hu.shape[2])], axis=-1)
    air = ndimage.binary_opening((hu < -400) & body, iterations=1)
    lungs = _largest_components(air, 2)
    if len(lungs) != 2:
        raise ValueError(f"expected two lung components, found {len(lungs)}")
    bone_mask = np.zeros(hu.shape, dtype=bool)
    for component in _largest_components((hu > 250) & body, count=10**6, min_size=50):
        bone_mask |= component
    labels = np.zeros(hu.shape, dtype=np.uint8)
    labels[body] = 3
    labels[lungs[0] | lungs[1]] = 1
    labels[bone_mask] = 2
    return labels


def main() -> None:
    digests = json.loads((DEST / "sha256.json").read_text())
    for case in CASES:
        image = nib.load(str(DEST / f"{case}_image.nii.gz"))
        labels = derive_anatomy(np.asarray(image.dataobj, dtype=np.float32))
        target = DEST / f"{case}_anatomy.nii.gz"
        nib.save(nib.Nifti1Image(labels, image.affine), str(target))
        digests[target.name] = hashlib.sha256(target.read_bytes()).hexdigest()
        counts = {name: int((labels == i).sum()) for i, name in enumerate(CLASSES) if i}
        print(target.name, counts, f"{target.stat().st_size / 1e3:.0f} kB")
    datalist = {
        "description": "Embedded segmentation demo: anatomy derived from the two chest CTs by HU thresholds.",
        "labels": dict(enumerate(CLASSES)),
        "training": [{"image": "lung1_image.nii.gz", "label": "lung1_anatomy.nii.gz"}],
        "validation": [{"image": "lung2_image.nii.gz", "label": "lung2_anatomy.nii.gz"}],
        "testing": ["lung2_image.nii.gz"],
    }
    (DEST / "segmentation_datalist.json").write_text(json.dumps(datalist, indent=4) + "\n")
    (DEST / "sha256.json").write_text(json.dumps(digests, indent=4) + "\n")


if __name__ == "__main__":
    main()
