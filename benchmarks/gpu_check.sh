#!/usr/bin/env bash
# One-GPU check of the training-speed levers (benchmarks/gpu_check.py), for a machine with a CUDA torch but
# possibly no MONAI and no network. The packages beyond torch come from the git-ignored folder .whl/, filled
# beforehand on a machine with network access, from the repository root:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#       monai==1.6.1 einops==0.8.2 pytorch-ignite==0.5.5 numpy==2.4.6
#
# (numpy is installed only where the machine's Python has none.) Then, on the GPU machine:
#
#   benchmarks/gpu_check.sh [OUT.json]          # default $OUT/gpu_check.json, or ./gpu_check.json
#
# It finishes in under 6 minutes (the Python script keeps a 330 s budget and times fewer steps when a stage
# is slow, recording how many it timed).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
SITE=${VOCO_GPU_SITE:-/tmp/voco_gpu_site}
PY=${PYTHON:-python3}
WHEELS=()
for wheel in "$REPO"/.whl/*.whl; do
    [ -e "$wheel" ] || continue
    case "$(basename "$wheel")" in
        numpy-*) "$PY" -c "import numpy" 2>/dev/null && continue ;;
    esac
    WHEELS+=("$wheel")
done
if [ ${#WHEELS[@]} -gt 0 ]; then
    "$PY" -m pip install -q --no-index --no-deps --target "$SITE" "${WHEELS[@]}"
fi
export PYTHONPATH="$REPO:$SITE${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import torch, monai; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'monai', monai.__version__)"
exec timeout 355 "$PY" "$REPO/benchmarks/gpu_check.py" "$@"
