"""Applications on top of the library: dataset converters (CC-CCII, ChestX-ray14), the embedded and synthetic
demo data, Model Zoo packaging, the label-efficiency runner, the method comparison, and the lister and downloader
of published encoders. Modules here are imported by name (several are command-line programs):
``python -m voco_components.apps.ccii``."""
