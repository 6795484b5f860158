"""A stand-in for torchvision in the MONAI Label environment: PyPI's torchvision wheels need a CUDA torch.

MONAI Label imports ``torchvision.utils`` at start (2D image helpers); the 3D bundle tasks never call it.
"""

__version__ = "0.0.0+voco.stand.in"

from . import utils  # noqa: F401, E402
