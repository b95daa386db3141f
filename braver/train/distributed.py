"""Several processes (GPUs, or CPU processes with gloo): set up from torchrun's environment.

``torchrun --nproc_per_node 2 $(which braver) train brain --data DATA`` starts one process per
GPU; each calls ``setup_from_environment`` (``braver train`` does), which joins the process
group (NCCL on CUDA, gloo on CPU) and pins the process to its GPU *before* any data is put on
a device (fastai issue #4007). ``train_from_recipe`` then gives every rank its own shard of
each epoch's patch centres (``PatchDL`` ``rank``/``world``), wraps the model in
``DistributedDataParallel`` for each phase (after freezing, which DDP must see), scores the
same validation patches on every rank, and writes the run folder from rank 0 only.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch


def environment_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def setup_from_environment(device: str) -> str:
    """Join the process group torchrun describes; return this process's device string.

    Does nothing (and returns ``device``) when ``WORLD_SIZE`` is 1 or absent.
    """
    if environment_world_size() <= 1 or torch.distributed.is_initialized():
        return device
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device.startswith("cuda"):
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
        backend = "nccl"
    else:
        backend = "gloo"
    torch.distributed.init_process_group(backend, timeout=timedelta(minutes=30))
    return device


def cleanup() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()
