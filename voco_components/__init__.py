"""VoCo (Volume Contrast) self-supervised pretraining for 3D medical images, as MONAI components."""

__version__ = "0.1.0"
