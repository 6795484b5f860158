#!/usr/bin/env bash
# Build a virtual environment with MONAI Label 0.8.5 on CPU (torch 2.13.0, MONAI 1.5.2, numpy<2) and this
# package installed editable, for tests/test_monailabel.py:
#   tools/monailabel_env.sh <venv>
#   VOCO_MONAILABEL_PYTHON=<venv>/bin/python python -m pytest -q -m monailabel
# The requirements, their pinned versions and the torchvision stand-in are in tools/monailabel/.
set -euo pipefail
VENV=${1:?usage: tools/monailabel_env.sh <venv>}
REPO=$(cd "$(dirname "$0")/.." && pwd)
RECIPE=$REPO/tools/monailabel
REQUIREMENTS=$RECIPE/requirements.txt
CONSTRAINTS=$RECIPE/constraints.txt
STAND_IN=$RECIPE/torchvision
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

python3 -m venv "$VENV"
PY=$VENV/bin/python
"$PY" -m pip install -q torch==2.13.0
# monailabel's own metadata pulls sam2, which builds from source and brings a CUDA torch: its runtime
# requirements are listed in tools/monailabel/requirements.txt instead
"$PY" -m pip install -q --no-deps monailabel==0.8.5
"$PY" -m pip install -q -r "$REQUIREMENTS" -c "$CONSTRAINTS"
# monailabel imports torchvision.utils at start; the 3D bundle tasks never call it
cp -r "$STAND_IN" "$("$PY" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")/"

"$PY" -m pip install -q --no-deps -e "$REPO"
missing=$("$PY" - <<'PY'
from importlib.metadata import PackageNotFoundError, requires, version

from packaging.requirements import Requirement

for line in requires("voco-components"):
    req = Requirement(line)
    if req.marker is not None:
        continue
    try:
        if req.specifier.contains(version(req.name), prereleases=True):
            continue
    except PackageNotFoundError:
        pass
    print(req)
PY
)
if [ -n "$missing" ]; then
    echo "monailabel_env.sh: installing $(echo $missing)"
    # shellcheck disable=SC2086  # one requirement a word
    "$PY" -m pip install -q $missing -c "$CONSTRAINTS"
fi
"$PY" -c "import monailabel.app, monailabel.tasks.infer.bundle, monailabel.tasks.train.bundle, voco_components, monai
print('MONAI Label environment ready: monai', monai.__version__)"
