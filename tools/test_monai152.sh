#!/usr/bin/env bash
# Run the test suite on the oldest stack this package supports, in a virtual environment built from scratch:
# MONAI 1.5.2 with the pytorch-ignite its `ignite` extra pins (0.4.11), numpy<2 and CPU torch 2.13.0. This is
# the stack MONAI Label 0.8.5 runs on, so every component a bundle config references is checked on it.
#   tools/test_monai152.sh [venv] [pytest arguments...]      (venv default: .venv-monai152 in the repository)
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=$(realpath -m "${1:-$REPO/.venv-monai152}")
shift || true
if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
    echo "test_monai152.sh: $VENV exists and is not a virtual environment; not replacing it" >&2
    exit 1
fi
export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_PROGRESS_BAR=off

python3 -m venv --clear "$VENV"
PY=$VENV/bin/python
"$PY" -m pip install -q torch==2.13.0
"$PY" -m pip install -q -e "$REPO[dev]" "monai[ignite]==1.5.2" "numpy<2"
"$PY" -c "import ignite, monai, numpy; print('monai', monai.__version__, 'ignite', ignite.__version__, 'numpy', numpy.__version__)"
cd "$REPO"
"$PY" -m pytest -q "$@"
