"""Applications on top of the library: dataset converters (CC-CCII), the embedded and synthetic demo data,
Model Zoo packaging, the label-efficiency runner, and the lister and downloader of published encoders. Modules
here are imported by name (several are command-line programs): ``python -m voco_components.apps.ccii``."""
