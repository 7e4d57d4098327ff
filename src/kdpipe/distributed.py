"""torchrun (DDP) process identity, read from the environment torchrun sets."""

from __future__ import annotations

import ctypes
import os
import signal
import sys

import torch


def distributed_env() -> tuple[int, int, int]:
    """(rank, local rank, world size) set by torchrun; (0, 0, 1) in a plain process."""
    env = os.environ
    return int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0")), int(env.get("WORLD_SIZE", "1"))


def launched_by_torchrun() -> bool:
    return "LOCAL_RANK" in os.environ


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the torchrun job (NCCL on GPUs, gloo on CPUs) once, a job of one process included
    (so that one GPU exercises the multi-GPU path); returns (rank, world size)."""
    rank, _, world = distributed_env()
    if launched_by_torchrun() and not torch.distributed.is_initialized():
        torch.distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world


def is_main_process() -> bool:
    return distributed_env()[0] == 0


def die_with_launcher() -> None:
    """In a torchrun worker: be killed when the launcher dies.

    torchrun starts each worker in a session of its own, so a SIGKILL of the stage's process
    group (Ctrl-C, a killed `dvc repro` job) would leave the workers training and writing outputs
    on their own.
    Linux only; elsewhere a no-op.
    """
    if not launched_by_torchrun() or not sys.platform.startswith("linux"):
        return
    launcher = os.getppid()
    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != launcher:  # the launcher died before the line above
        print("kdpipe: the torchrun launcher is gone; this worker stops", file=sys.stderr)
        os._exit(1)
