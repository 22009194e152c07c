#!/usr/bin/env bash
# The GPU check of the pretraining step (benchmarks/gpu_check.py): dropbench pretrain vs a plain timm + torch loop,
# eager and compiled, on synthetic ImageNet-shaped batches. Needs only torch and timm (no mm* packages, no network):
# dropbench is installed from this checkout without its dependencies when it is not importable yet.
#   bash benchmarks/gpu_check.sh [gpu_check.py arguments]      # sized for under 8 minutes on one H100
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python}
if ! "$PYTHON" -c "import dropbench.pretrain.train" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --no-deps --no-build-isolation --no-index -e . >&2 || {
        echo "error: cannot install dropbench from this checkout (pip install --no-deps -e . needs setuptools)" >&2
        exit 2
    }
fi
"$PYTHON" -c "import torch; print('GPU:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"
exec "$PYTHON" benchmarks/gpu_check.py "$@"
