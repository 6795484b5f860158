"""The embedded demo data: five real CTs (pyradiomics and TotalSegmentator test data), two with organ maps,
and their datalists."""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "DEMO_DIR",
    "DEMO_DATALIST",
    "DEMO_ORGANS_DATALIST",
]


DEMO_DIR = Path(__file__).resolve().parent / "demo_data"
"""Five real CTs (pyradiomics and TotalSegmentator test data), int16 HU, two with organ maps; see its README.md."""


DEMO_DATALIST = DEMO_DIR / "datalist.json"
"""Pretraining: four CTs train, the chest CT ``lung2`` is held out."""


DEMO_ORGANS_DATALIST = DEMO_DIR / "organs_datalist.json"
"""Two CTs with BTCV organ ids (TotalSegmentator's predictions): ``abdomen`` trains, ``upper_abdomen`` is held out."""
