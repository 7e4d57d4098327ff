"""torchrun (DDP) process identity, read from the environment torchrun sets."""

from __future__ import annotations

import os

import torch


def distributed_env() -> tuple[int, int, int]:
    """(rank, local rank, world size) set by torchrun; (0, 0, 1) in a plain process."""
    env = os.environ
    return int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0")), int(env.get("WORLD_SIZE", "1"))


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the torchrun job (NCCL on GPUs, gloo on CPUs) once; returns (rank, world size)."""
    rank, _, world = distributed_env()
    if world > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world


def is_main_process() -> bool:
    return distributed_env()[0] == 0
