"""Rebuild the embedded demo CTs in ``voco_components/apps/demo_data`` from their public sources.

Usage: ``python tools/make_demo_data.py --chest-ct ../shared/data/chest_ct --totalseg ../shared/data/totalseg_examples``

- ``lung1``, ``lung2`` (pyradiomics chest CTs): oriented to RAS, resampled in plane to 1.5 mm (trilinear;
  the 5 mm slices are kept), int16 HU; the lesion masks with nearest neighbour.
- ``abdomen`` (TotalSegmentator's abdomen-pelvis example, 3 mm, kept), ``chest_cta`` (its chest CTA, resampled
  from 1.5 mm to 2 mm to keep the package small) and ``upper_abdomen`` (its 20-slice DICOM slab, resampled in
  plane from 0.98 mm to 1.5 mm, the 2 mm slices kept): oriented to RAS,
  int16 HU clipped to [-1024, 1500] (every VoCo window lies inside). The ``total`` label maps of
  ``abdomen`` and ``upper_abdomen`` are mapped to BTCV's 13 organ ids (``BTCV_ORGANS``; every other
  structure becomes 0) and resampled with nearest neighbour onto their image's grid.

This is a development tool: the package never reads the source folders at run time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged, Orientationd, SaveImage, Spacingd

DEST = Path(__file__).resolve().parents[1] / "voco_components" / "apps" / "demo_data"
CHEST_CASES = ("lung1", "lung2")
HU_CLIP = (-1024, 1500)
BTCV_ORGANS = (
    "spleen",
    "kidney_right",
    "kidney_left",
    "gallbladder",
    "esophagus",
    "liver",
    "stomach",
    "aorta",
    "inferior_vena_cava",
    "portal_vein_and_splenic_vein",
    "pancreas",
    "adrenal_gland_right",
    "adrenal_gland_left",
)
"""BTCV's label order: id i + 1 is ``BTCV_ORGANS[i]`` (TotalSegmentator's ``total`` class names)."""
TOTALSEG_CASES = {
    # name: (image source, label source or None, spacing of the stored copy in mm, None or 0 to keep an axis's)
    "abdomen": ("abdomen_ct.nii.gz", "abdomen_ct_labels.nii.gz", None),
    "chest_cta": ("chest_cta.nii.gz", None, (2.0, 2.0, 2.0)),
    "upper_abdomen": ("upper_abdomen_dicom", "upper_abdomen_labels.nii.gz", (1.5, 1.5, 0.0)),
}


def _save(volume: torch.Tensor, affine: torch.Tensor, path: Path, dtype: type) -> str:
    """Write a (1, X, Y, Z) volume as ``path`` (NIfTI of ``dtype``) and return its sha256."""
    image = MetaTensor(volume.round().to(torch.int16 if dtype is np.int16 else torch.uint8), affine=affine)
    image.meta["filename_or_obj"] = path.name.replace(".nii.gz", "")
    writer = SaveImage(
        output_dir=str(path.parent),
        output_postfix="",
        separate_folder=False,
        output_dtype=dtype,
        resample=False,
        print_log=False,
    )
    writer(image)
    print(path.name, tuple(volume.shape[1:]), f"{path.stat().st_size / 1e6:.2f} MB")
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _loader(keys: tuple[str, ...], spacing: tuple[float, float, float] | None) -> Compose:
    """ITK reading, RAS orientation, and an optional resampling (trilinear images, nearest labels)."""
    transforms = [
        LoadImaged(keys=keys, reader="ITKReader"),
        EnsureChannelFirstd(keys=keys),
        Orientationd(keys=keys, axcodes="RAS"),
    ]
    if spacing:
        transforms.append(Spacingd(keys=keys, pixdim=spacing, mode=("bilinear", "nearest")[: len(keys)]))
    return Compose(transforms)


def btcv_lookup(class_map: dict[str, str]) -> np.ndarray:
    """TotalSegmentator ``total`` id -> BTCV id (0 for every structure that is not one of BTCV's 13 organs)."""
    lookup = np.zeros(max(int(k) for k in class_map) + 1, dtype=np.uint8)
    for total_id, name in class_map.items():
        if name in BTCV_ORGANS:
            lookup[int(total_id)] = BTCV_ORGANS.index(name) + 1
    return lookup


def build_chest(source: Path) -> dict[str, str]:
    """The two pyradiomics chest CTs and their lesion masks."""
    digests = {}
    load = _loader(("image", "label"), (1.5, 1.5, 0.0))
    for case in CHEST_CASES:
        data = load({key: str(source / f"{case}_{key}.nrrd") for key in ("image", "label")})
        for key in ("image", "label"):
            target = DEST / f"{case}_{key}.nii.gz"
            digests[target.name] = _save(data[key][0:1], data[key].affine, target, np.int16)
    return digests


def build_totalseg(source: Path) -> dict[str, str]:
    """The three TotalSegmentator CTs, and BTCV organ maps of the two that have label maps."""
    lookup = torch.as_tensor(btcv_lookup(json.loads((source / "total_class_map.json").read_text())))
    digests = {}
    for case, (image_name, label_name, spacing) in TOTALSEG_CASES.items():
        keys = ("image", "label") if label_name else ("image",)
        names = {"image": image_name, "label": label_name}
        data = _loader(keys, spacing)({key: str(source / names[key]) for key in keys})
        image = data["image"][0:1]
        target = DEST / f"{case}_image.nii.gz"
        digests[target.name] = _save(image.clamp(*HU_CLIP), image.affine, target, np.int16)
        if label_name:
            label = data["label"][0:1]
            if label.shape != image.shape or not torch.allclose(label.affine, image.affine, atol=1e-3):
                raise ValueError(f"{source / label_name}: not on the grid of {source / image_name} after RAS.")
            organs = lookup[label.as_tensor().round().long()].to(torch.float32)
            target = DEST / f"{case}_organs.nii.gz"
            digests[target.name] = _save(organs, image.affine, target, np.uint8)
    return digests


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--chest-ct", type=Path, required=True, help="folder with lung{1,2}_{image,label}.nrrd")
    parser.add_argument("--totalseg", type=Path, required=True, help="folder with the TotalSegmentator examples")
    args = parser.parse_args()
    DEST.mkdir(parents=True, exist_ok=True)
    digests = build_chest(args.chest_ct) | build_totalseg(args.totalseg)
    listed = DEST / "sha256.json"  # keeps the entries of files made by other tools (make_demo_radiograph.py)
    digests = {**(json.loads(listed.read_text()) if listed.is_file() else {}), **digests}
    listed.write_text(json.dumps(dict(sorted(digests.items())), indent=4) + "\n")


if __name__ == "__main__":
    main()
