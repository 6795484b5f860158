"""Make the embedded chest radiograph ``voco_components/apps/demo_data/radiograph_pa.png`` from pydicom-data.

Usage: ``pip install pydicom-data && python tools/make_demo_radiograph.py``

The source is ``RG1_UNCR.dcm`` of the pydicom-data 1.0.0 package (MIT licence, copied next to the image as
``PYDICOM_DATA_LICENSE.txt``): a real posteroanterior chest radiograph (computed radiography, Philips,
1955 x 1841 pixels, 15-bit, MONOCHROME1). It is inverted to MONOCHROME2 (bone bright), windowed between its
0.5th and 99.5th percentiles to 8 bits, and shrunk to 256 columns (Lanczos, aspect ratio kept: 256 x 272),
which is all the CXR demo set (:mod:`voco_components.apps.demo_cxr`) needs. Its sha256 goes into
``sha256.json``. This is a development tool: nothing reads pydicom-data at run time.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pydicom
from PIL import Image

DEST = Path(__file__).resolve().parents[1] / "voco_components" / "apps" / "demo_data"
SOURCE = "RG1_UNCR.dcm"
NAME = "radiograph_pa.png"
WIDTH = 256
PERCENTILES = (0.5, 99.5)


def source_folder() -> Path:
    """pydicom-data's ``data_store/data`` folder (the package installs a module named ``data_store``)."""
    spec = importlib.util.find_spec("data_store")
    if spec is None or spec.origin is None:
        raise SystemExit("pydicom-data is not installed: pip install pydicom-data")
    return Path(spec.origin).parent


def main() -> None:
    folder = source_folder()
    dataset = pydicom.dcmread(folder / "data" / SOURCE)
    pixels = dataset.pixel_array.astype(np.float64)
    if dataset.PhotometricInterpretation == "MONOCHROME1":
        pixels = pixels.max() - pixels
    low, high = np.percentile(pixels, PERCENTILES)
    window = np.clip((pixels - low) / (high - low), 0.0, 1.0)
    image = Image.fromarray(np.round(window * 255).astype(np.uint8))
    height = round(image.height * WIDTH / image.width)
    image.resize((WIDTH, height), Image.Resampling.LANCZOS).save(DEST / NAME, optimize=True)
    licence = next(folder.parent.glob("pydicom_data-*.dist-info/LICENSE"), None)
    if licence is None:
        raise SystemExit("pydicom-data's LICENSE file was not found next to data_store.")
    (DEST / "PYDICOM_DATA_LICENSE.txt").write_text(licence.read_text())
    digests = json.loads((DEST / "sha256.json").read_text())
    digests[NAME] = hashlib.sha256((DEST / NAME).read_bytes()).hexdigest()
    (DEST / "sha256.json").write_text(json.dumps(dict(sorted(digests.items())), indent=4) + "\n")
    print(f"wrote {DEST / NAME} ({WIDTH} x {height}) from {folder / 'data' / SOURCE}")


if __name__ == "__main__":
    main()
