"""Device, precision and determinism, resolved once from ``train.*``."""

from __future__ import annotations

import contextlib
import os
import random
from dataclasses import dataclass

import numpy as np
import torch

from kdpipe.config import TrainConfig
from kdpipe.distributed import distributed_env, init_distributed
from kdpipe.engine.rules import EngineChoice, resolve_choice
from kdpipe.errors import ConfigError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_has_fast_bf16() -> bool:
    """True where oneDNN runs bf16 natively (AVX-512 bf16 or AMX)."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def cpu_isa() -> str:
    """The CPU family as far as floating-point results go: ``amx_bf16`` or ``avx512_bf16`` where
    the CPU has them, else the vector ISA PyTorch dispatches to (``avx512``, ``avx2``, ...).
    Recorded with the training metrics: re-validation expects identical numbers only on the same."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo") as fh:
            flags = set(next((line for line in fh if line.startswith("flags")), ":").split(":", 1)[1].split())
    except OSError:
        pass
    for flag in ("amx_bf16", "avx512_bf16"):
        if flag in flags:
            return flag
    return torch.backends.cpu.get_cpu_capability().lower()


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    precision: str  # fp32 | bf16 | fp16
    rank: int = 0  # this process in a torchrun (DDP) job
    world_size: int = 1
    distributed: bool = False  # in a torchrun job (DDP), of one process or more
    channels_last: bool = True  # models and batches in NHWC
    small_conv_gemm: bool = True  # on CPUs: small 3x3 convolutions as im2col + GEMM (engine/small_conv.py)
    rule_source: str = ""  # where ``auto`` settings came from: "<cpu type>/<family>" of engine/rules.json

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.precision]

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def grad_scaler(self) -> torch.amp.GradScaler:
        # Only fp16 needs loss scaling; bf16 has fp32's exponent range.
        return torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")

    def describe(self) -> str:
        ddp = f", DDP rank {self.rank} of {self.world_size}" if self.distributed else ""
        layout = ", channels_last" if self.channels_last else ""
        gemm = ", small-conv GEMM" if self.small_conv_gemm else ""
        rule = f" (measured rule {self.rule_source})" if self.rule_source else ""
        return f"{self.device.type} {self.precision}{layout}{gemm}{rule}, {torch.get_num_threads()} threads{ddp}"


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: 'cuda' requested but no CUDA device is available (use 'auto' or 'cpu')")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def resolve_precision(requested: str, device: torch.device, choice: EngineChoice | None = None) -> str:
    if requested != "auto":
        if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("train.precision: this GPU has no bf16 support (use 'fp16' or 'auto')")
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if not cpu_has_fast_bf16():
        return "fp32"
    return choice.precision if choice is not None else "bf16"


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def setup_runtime(cfg: TrainConfig, seed: int, arch: str | None = None, teacher_arch: str | None = None) -> Runtime:
    """Device, precision, memory format and threads for training ``arch`` (from a live
    ``teacher_arch``, if any; the measured rule decides the settings left at ``auto``: see
    engine/rules.py), seeded and, under torchrun, joined to the group."""
    device = resolve_device(cfg.device)
    _, local_rank, world = distributed_env()
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if cfg.num_threads:
        torch.set_num_threads(cfg.num_threads)
    elif device.type == "cpu" and world > 1:  # processes on one machine share its cores
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        # warn_only on CUDA: a few kernels (e.g. some backward passes) have no deterministic
        # version; CPU runs are fully deterministic for the same machine and thread count.
        torch.use_deterministic_algorithms(True, warn_only=device.type == "cuda")
        # Deterministic mode also fills every new tensor with NaN, a debugging aid for kernels
        # that read memory they did not write (none of ours; the suite's repeat-run tests would
        # catch one). It costs a memory pass per allocation: 11% of an eager CPU KD step in the
        # profiler (README, Performance).
        torch.utils.deterministic.fill_uninitialized_memory = False
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True
    seed_everything(seed)  # the same on every rank: same initial weights, same batch order
    rank, world = init_distributed(device)
    distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
    choice, source = None, ""
    if device.type == "cpu":
        choice, source = resolve_choice(cpu_isa(), cpu_has_fast_bf16(), arch, teacher_arch)
    settings = (cfg.precision, cfg.channels_last, cfg.small_conv_gemm)
    channels_last = cfg.channels_last if cfg.channels_last != "auto" else (choice.channels_last if choice else True)
    small_conv = cfg.small_conv_gemm if cfg.small_conv_gemm != "auto" else (choice.small_conv_gemm if choice else True)
    return Runtime(device, resolve_precision(cfg.precision, device, choice), rank, world, distributed,
                   channels_last=channels_last, small_conv_gemm=device.type == "cpu" and small_conv,
                   rule_source=source if "auto" in settings else "")


def teacher_chunk(cfg: TrainConfig, device: torch.device) -> int:
    """``train.teacher_chunk``, resolved: 0 (auto) is 32 images on CPUs, whose caches a small
    chunk's activations fit, and whole batches on GPUs."""
    return cfg.teacher_chunk or (32 if device.type == "cpu" else 0)
