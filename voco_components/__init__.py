"""VoCo (Volume Contrast) self-supervised pretraining for 3D medical images, as MONAI components."""

__version__ = "0.2.0"
