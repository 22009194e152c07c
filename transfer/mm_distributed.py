"""Detection and segmentation on several processes without GPUs: the process group and the DDP wrapper.

mmengine's ``pytorch`` launcher calls ``torch.cuda.set_device`` and its Runner wraps the model in DDP with
``device_ids=[LOCAL_RANK]``; both need a GPU. On a machine without one (a CPU node, a test) the project makes the
device choice: it joins torchrun's process group over gloo itself, which the Runner then uses as it is, and wraps the
model in ``CpuDistributedDataParallel``, mmengine's DDP wrapper without device ids. Everything else (samplers, the
evaluator's gathering of results, rank-0 logging and checkpoints) is mmengine's own code path. With GPUs nothing
changes: mmengine's launcher and wrapper run as in mm*'s own tools.
"""

import os

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS

from dropbench.core.errors import UserInputError


@MODEL_WRAPPERS.register_module(force=True)
class CpuDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper for a model on the CPU: the Runner's ``device_ids`` (a GPU index) are dropped."""

    def __init__(self, module: torch.nn.Module, device_ids: list[int] | None = None, **kwargs):
        super().__init__(module=module, device_ids=None, **kwargs)


def start_processes(cfg: Config, launcher: str) -> None:
    """Join torchrun's processes over gloo where there is no GPU, before the Runner would try CUDA."""
    if launcher == "none" or torch.cuda.is_available():
        return
    if launcher != "pytorch":
        raise UserInputError("--launcher", f"'{launcher}' needs GPUs; without them run under torchrun with pytorch")
    if "RANK" not in os.environ:
        raise UserInputError("--launcher", "pytorch needs torchrun (RANK is not set): torchrun ... -m dropbench.cli")
    if not dist.is_initialized():
        dist.init_process_group(backend="gloo")
    cfg.model_wrapper_cfg = dict(type=CpuDistributedDataParallel.__name__)
