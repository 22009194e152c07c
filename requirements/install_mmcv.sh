#!/usr/bin/env bash
# Install mmcv with its compiled ops, built against the installed torch (called by `make install`).
#   bash requirements/install_mmcv.sh PYTHON CONSTRAINTS
# CPU ops where no GPU is visible. CUDA ops where torch sees a GPU (for its architectures), or on request on a
# machine without one: CUDA_ARCH="8.0 9.0" (TORCH_CUDA_ARCH_LIST's syntax). nvcc comes from CUDA_HOME when set,
# otherwise from PyPI's nvidia-* packages matching torch's CUDA version. A CUDA build is kept as a wheel in
# $DROPBENCH_WHEELS (default ~/.cache/dropbench/wheels), keyed by mmcv, torch, CUDA and architectures, because
# pip's own cache keys on the sdist alone and would hand a CPU-only build back.
set -euo pipefail
PYTHON=$1
CONSTRAINTS=$2
VENV_ROOT=$("$PYTHON" -c "import sys; print(sys.prefix)")
FLAVOUR_FILE=$VENV_ROOT/.mmcv-ops

fail() { echo "error: $*" >&2; exit 2; }

torch_cuda=$("$PYTHON" -c "import torch; print(torch.version.cuda or '')")
arch=${CUDA_ARCH:-}
if [ -z "$arch" ]; then
    arch=$("$PYTHON" -c "
import torch
if torch.cuda.is_available():
    caps = {torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())}
    print(' '.join(f'{major}.{minor}' for major, minor in sorted(caps)))")
fi

if [ -z "$arch" ]; then
    flavour=cpu
else
    [ -n "$torch_cuda" ] || fail "CUDA_ARCH: torch is a CPU-only build; install a CUDA torch to build mmcv's CUDA ops"
    flavour="cuda $torch_cuda, sm ${arch}"
fi
if [ -f "$FLAVOUR_FILE" ] && [ "$(cat "$FLAVOUR_FILE")" = "$flavour" ] && "$PYTHON" -c "import mmcv.ops" 2>/dev/null; then
    echo "mmcv ops: $flavour (installed)"
    exit 0
fi
if [ "$flavour" = cpu ]; then
    if [ -f "$FLAVOUR_FILE" ]; then  # CUDA ops before: pip would take the installed mmcv as satisfying
        "$PYTHON" -m pip uninstall --yes --quiet mmcv
    fi
    # About 17 min on 2 cores the first time; pip caches the built wheel. Without --no-build-isolation pip
    # silently installs mmcv without its ops.
    MMCV_WITH_OPS=1 MAX_JOBS=$(nproc) "$PYTHON" -m pip install --no-build-isolation -c "$CONSTRAINTS" mmcv
else
    if [ -z "${CUDA_HOME:-}" ]; then
        cuda_major=${torch_cuda%%.*}
        [ "$cuda_major" -ge 13 ] || fail "CUDA_HOME: torch runs CUDA $torch_cuda; set CUDA_HOME to a CUDA $torch_cuda toolkit (e.g. module load cuda), PyPI's nvcc route covers CUDA 13 and later"
        # nvcc, cicc, the compiler's runtime headers and CCCL at torch's CUDA version; torch brings cudart and
        # the libraries' headers. They all install into site-packages/nvidia/cu13.
        "$PYTHON" -m pip install --quiet "nvidia-cuda-nvcc==$torch_cuda.*" "nvidia-nvvm==$torch_cuda.*" \
            "nvidia-cuda-crt==$torch_cuda.*" "nvidia-cuda-cccl==$torch_cuda.*"
        pypi_cuda=$("$PYTHON" -c "
import os, nvidia
print(next(os.path.join(p, 'cu$cuda_major') for p in nvidia.__path__ if os.path.isdir(os.path.join(p, 'cu$cuda_major'))))")
        # A toolkit folder in the layout torch's extension builder expects: the packages' folders, plus the
        # unversioned libcudart.so the linker asks for.
        CUDA_HOME=$VENV_ROOT/cuda-$torch_cuda
        mkdir -p "$CUDA_HOME/lib"
        for part in bin include nvvm; do ln -sfn "$pypi_cuda/$part" "$CUDA_HOME/$part"; done
        for library in "$pypi_cuda"/lib/*; do ln -sfn "$library" "$CUDA_HOME/lib/$(basename "$library")"; done
        ln -sfn "$pypi_cuda/lib/libcudart.so.$cuda_major" "$CUDA_HOME/lib/libcudart.so"
        export CUDA_HOME
    fi
    [ -x "$CUDA_HOME/bin/nvcc" ] || fail "CUDA_HOME: $CUDA_HOME/bin/nvcc not found; point CUDA_HOME at a CUDA $torch_cuda toolkit"
    key=mmcv$(sed -n 's/^mmcv==//p' "$CONSTRAINTS")-torch$("$PYTHON" -c "import torch; print(torch.__version__)")-sm${arch// /-}
    wheels=${DROPBENCH_WHEELS:-$HOME/.cache/dropbench/wheels}/$key
    if ! ls "$wheels"/mmcv-*.whl >/dev/null 2>&1; then
        echo "building mmcv's CUDA ops (CUDA $torch_cuda, sm $arch) with $CUDA_HOME/bin/nvcc into $wheels"
        rm -rf "$wheels.partial"
        FORCE_CUDA=1 MMCV_WITH_OPS=1 MAX_JOBS=$(nproc) TORCH_CUDA_ARCH_LIST="$arch" \
            "$PYTHON" -m pip wheel --no-build-isolation --no-deps --no-cache-dir -c "$CONSTRAINTS" -w "$wheels.partial" mmcv
        mv "$wheels.partial" "$wheels"
    fi
    "$PYTHON" -m pip uninstall --yes --quiet mmcv || true
    "$PYTHON" -m pip install -c "$CONSTRAINTS" "$wheels"/mmcv-*.whl
    compiled=$("$PYTHON" -c "from mmcv.ops import get_compiling_cuda_version; print(get_compiling_cuda_version())")
    [ "$compiled" != "not available" ] || fail "mmcv: the build in $wheels has no CUDA ops; remove that folder and rerun"
fi
echo "$flavour" > "$FLAVOUR_FILE"
echo "mmcv ops: $flavour"
