"""torch.distributed set-up for the training commands under `torchrun`.

Without torchrun's environment (WORLD_SIZE unset or 1) everything runs in one process.
The backend is gloo on CPU and nccl when CUDA is in use.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "cpu") -> DistInfo:
    """Join the process group torchrun describes (no-op for a single process)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local)
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local)


def barrier(info: DistInfo) -> None:
    if info.world > 1:
        dist.barrier()


def close_distributed(info: DistInfo) -> None:
    if info.world > 1 and dist.is_initialized():
        dist.destroy_process_group()
