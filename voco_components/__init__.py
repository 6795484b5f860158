"""VoCo (Volume Contrast) self-supervised pretraining for 3D medical images, as MONAI components."""

from __future__ import annotations

import re
from importlib.metadata import PackageNotFoundError, requires, version

__version__ = "0.2.0"


def missing_requirements(distribution: str = "voco-components") -> list[str]:
    """The requirements of ``distribution`` (extras aside) whose package is not installed; none when the package
    runs from a source tree that was never installed, which has no record of its requirements."""
    try:
        required = requires(distribution) or []
    except PackageNotFoundError:
        return []
    missing = []
    for requirement in required:
        if "extra ==" in requirement:
            continue
        name = re.split(r"[\s<>=!~;\[(]", requirement, maxsplit=1)[0]
        try:
            version(name)
        except PackageNotFoundError:
            missing.append(requirement.split(";")[0].strip())
    return missing


def _require_installed() -> None:
    """Stop at the first import with the missing packages and the command that installs them. A bundle config's
    ``imports`` swallow an ImportError and would otherwise fail later with an unhelpful missing attribute."""
    missing = missing_requirements()
    if missing:
        listed = " ".join(f"'{m}'" for m in missing)
        raise ImportError(
            f"voco_components needs {', '.join(missing)}, not installed in this environment: pip install {listed}"
        )


_require_installed()
