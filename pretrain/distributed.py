"""The processes a pretraining runs on: this one, or torchrun's (DDP over NCCL on GPUs, gloo on CPUs)."""

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Processes:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str | None) -> tuple[Processes, torch.device]:
    """Join torchrun's process group where ``WORLD_SIZE`` > 1; the device this process trains on (default: its
    GPU where there is one)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if world <= 1:
        return Processes(), torch.device(device)
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return Processes(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank), dev
