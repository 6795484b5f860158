"""Rebuild the embedded demo CTs in ``voco_components/demo_data`` from the two pyradiomics chest CTs.

Usage: ``python tools/make_demo_data.py --source ../shared/data/chest_ct``. Each volume is read with its
orientation, resampled in plane to 1.5 mm in RAS (trilinear; the 5 mm slices are kept) and stored as int16 HU NIfTI; the
lesion masks are resampled with nearest neighbour. This is a development tool: the package never
reads the source folder at run time.
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

DEST = Path(__file__).resolve().parents[1] / "voco_components" / "demo_data"
CASES = ("lung1", "lung2")


def _save(volume: MetaTensor, path: Path) -> None:
    volume = MetaTensor(volume.as_tensor().round().to(torch.int16), affine=volume.affine)
    writer = SaveImage(
        output_dir=str(path.parent),
        output_postfix="",
        separate_folder=False,
        output_dtype=np.int16,
        resample=False,
        print_log=False,
    )
    volume.meta["filename_or_obj"] = path.name.replace(".nii.gz", "")
    writer(volume)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--source", type=Path, required=True, help="folder with lung{1,2}_{image,label}.nrrd")
    args = parser.parse_args()
    load = Compose(
        [
            LoadImaged(keys=("image", "label"), reader="ITKReader"),
            EnsureChannelFirstd(keys=("image", "label")),
            Orientationd(keys=("image", "label"), axcodes="RAS"),
            Spacingd(keys=("image", "label"), pixdim=(1.5, 1.5, 0.0), mode=("bilinear", "nearest")),
        ]
    )
    DEST.mkdir(parents=True, exist_ok=True)
    digests = {}
    for case in CASES:
        sources = {key: str(args.source / f"{case}_{key}.nrrd") for key in ("image", "label")}
        data = load(sources)
        for key in ("image", "label"):
            target = DEST / f"{case}_{key}.nii.gz"
            _save(data[key][0:1], target)
            digests[target.name] = hashlib.sha256(target.read_bytes()).hexdigest()
            print(target.name, tuple(data[key].shape[1:]), f"{target.stat().st_size / 1e6:.2f} MB")
    (DEST / "sha256.json").write_text(json.dumps(digests, indent=4) + "\n")


if __name__ == "__main__":
    main()
