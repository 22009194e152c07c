#!/usr/bin/env bash
# The GPU check of the pretraining step (benchmarks/gpu_check.py): dropbench pretrain vs a plain timm + torch loop,
# eager and compiled, on synthetic ImageNet-shaped batches. Needs only torch and timm (no mm* packages, no network):
# dropbench is installed from this checkout without its dependencies when it is not importable yet.
# Where mmcv with CUDA ops is installed, also mmcv's RoIAlign and NMS on the GPU against the CPU
# (benchmarks/gpu_check_ops.py, seconds); that part is skipped, saying why, elsewhere.
#   bash benchmarks/gpu_check.sh [gpu_check.py arguments]      # sized for under 8 minutes on one H100
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python || command -v python3)}  # some images have only python3
if ! "$PYTHON" -c "import dropbench.pretrain.train" 2>/dev/null; then
    "$PYTHON" -m pip install --quiet --no-deps --no-build-isolation --no-index -e . >&2 || {
        echo "error: cannot install dropbench from this checkout (pip install --no-deps -e . needs setuptools)" >&2
        exit 2
    }
fi
"$PYTHON" -c "import torch; print('GPU:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'none')"
step=0
"$PYTHON" benchmarks/gpu_check.py "$@" || step=$?  # a failure here still leaves the ops checked below
ops=$("$PYTHON" -c "from mmcv.ops import get_compiling_cuda_version; print(get_compiling_cuda_version())" 2>/dev/null) ||
    ops="mmcv with its ops is not installed"
if [ "$ops" = "not available" ]; then
    echo "mmcv ops check skipped: mmcv's ops were built without CUDA"
elif [ "$ops" = "mmcv with its ops is not installed" ]; then
    echo "mmcv ops check skipped: $ops"
else
    "$PYTHON" benchmarks/gpu_check_ops.py || step=$?
fi
exit "$step"
