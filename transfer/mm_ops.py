"""Whether mmcv's compiled ops can run where det/seg are about to run.

Mask R-CNN's RoIAlign and NMS are mmcv's compiled ops. An mmcv built on a machine without a GPU (a CPU login
node, this project's default install) has CPU kernels only, and fails inside the first training step on a CUDA
tensor, after the wait in the queue. So a run bound for CUDA checks first, and a suite checks before any
pretraining.
"""

import torch

from dropbench.core.errors import UserInputError

FIX = (
    'rebuild mmcv with CUDA ops for the GPUs\' compute capabilities: make install CUDA_ARCH="8.0 9.0" '
    "(docs/install.md, 'Install on a GPU cluster')"
)


def _compiled_cuda() -> str:
    """The CUDA version mmcv's ops were compiled with, or ``not available`` for CPU-only ops."""
    from mmcv.ops import get_compiling_cuda_version

    return str(get_compiling_cuda_version())


def cuda_ops_problem(compiled: str, runtime: str | None) -> str | None:
    """Why ops compiled for CUDA ``compiled`` cannot run under torch's CUDA ``runtime``, or None when they can
    (CUDA keeps binary compatibility within a major version)."""
    if compiled == "not available":
        return "mmcv's ops were built without CUDA, so RoIAlign and NMS would fail in the first step on the GPU"
    if runtime is None or compiled.split(".")[0] != runtime.split(".")[0]:
        return f"mmcv's ops were built for CUDA {compiled}, torch runs CUDA {runtime}"
    return None


def gpu_visible() -> bool:
    """Whether this process will run on a GPU (a function of its own, so that a test can stand in for a GPU)."""
    return torch.cuda.is_available()


def check_cuda_ops(on_cuda: bool | None = None, compiled: str | None = None, field: str = "mmcv") -> None:
    """Refuse, in one line naming the fix, a det/seg run bound for CUDA (``on_cuda``; default: a GPU is visible)
    with mmcv ops that cannot run there (``compiled``: default, the installed mmcv's)."""
    if on_cuda is None:
        on_cuda = gpu_visible()
    if not on_cuda:
        return
    problem = cuda_ops_problem(compiled if compiled is not None else _compiled_cuda(), torch.version.cuda)
    if problem is None and compiled is None and torch.cuda.is_available():  # a GPU of this process: try them on it
        problem = ops_problem_on(torch.device("cuda", torch.cuda.current_device()))
    if problem is not None:
        raise UserInputError(field, f"{problem}; {FIX}")


def ops_problem_on(device: torch.device, dtypes: tuple[torch.dtype, ...] | None = None) -> str | None:
    """What goes wrong running NMS and RoIAlign on two boxes on ``device`` in each of ``dtypes`` (default: fp32,
    and on a GPU fp16 too, the precision of mixed-precision training), or None: a matching CUDA version does not
    mean kernels for this GPU's architecture were built ("no kernel image is available")."""
    from mmcv.ops import RoIAlign, nms

    if dtypes is None:
        dtypes = (torch.float32, torch.float16) if device.type == "cuda" else (torch.float32,)
    for dtype in dtypes:
        try:
            boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [1.0, 1.0, 9.0, 9.0]], device=device, dtype=dtype)
            nms(boxes, torch.tensor([0.9, 0.8], device=device, dtype=dtype), iou_threshold=0.5)
            features = torch.rand(1, 2, 16, 16, device=device, dtype=dtype)
            rois = torch.cat([torch.zeros(2, 1, device=device, dtype=dtype), boxes], dim=1)
            RoIAlign((2, 2), spatial_scale=1.0, sampling_ratio=2)(features, rois)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        except (RuntimeError, NotImplementedError) as err:
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            return f"mmcv's NMS or RoIAlign fails on {device} in {dtype}: {first}"
    return None
