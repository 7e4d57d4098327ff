"""Distillation method base class and registry.

A method wraps the student (and, if it needs one, a frozen teacher) and turns a batch into
the student's logits and a loss. Parts it adds (regressors, projections, heads) are its own
submodules: they train with the student through ``method.parameters()`` and are never saved
with it. Adding a method is one module that subclasses ``Method`` and registers a name.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from pydantic import BaseModel
from torch import nn

if TYPE_CHECKING:
    from kdpipe.config import DistillConfig

METHODS: dict[str, type[Method]] = {}


@dataclass
class MethodContext:
    """What a method may need besides the two networks."""

    where: str = "distill"  # the params section of this link, for error messages
    input_shape: tuple[int, int, int] | None = None  # (C, H, W), to probe feature shapes
    build_network: Callable[[str], nn.Module] | None = None  # a fresh model of an arch for this data
    student_arch: str | None = None
    teacher_arch: str | None = None
    num_train: int | None = None  # training-set size, for per-sample state (crd's memory banks)


def register_method(name: str):
    def wrap(cls: type[Method]) -> type[Method]:
        cls.name = name
        METHODS[name] = cls
        return cls

    return wrap


class Method(nn.Module):
    name: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True
    # Only the teacher's logits are used: they can come from a cache (``<link>.cache_views``).
    logits_only: ClassVar[bool] = False
    # Per-sample state (crd's memory banks): the trainer passes each batch's training-set indices.
    needs_indices: ClassVar[bool] = False
    # Buffers DDP must not broadcast from rank 0 at every step (large, and kept in step otherwise).
    ddp_local_buffers: ClassVar[tuple[str, ...]] = ()
    # Schema of the method's own settings under ``distill.<name>`` (None: it has none).
    Params: ClassVar[type[BaseModel] | None] = None

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        cfg: DistillConfig | None = None,
        label_smoothing: float = 0.0,
        context: MethodContext | None = None,
    ):
        super().__init__()
        self.context = context or MethodContext()
        self.epoch, self.epochs = 1, 1
        if self.needs_teacher and teacher is None:
            raise ValueError(f"distillation method '{self.name}' needs a teacher")
        self.student = student
        # Kept out of the module tree: the teacher is frozen and must not reach the optimiser.
        self.__dict__["teacher"] = teacher
        if teacher is not None:
            teacher.eval().requires_grad_(False)
        self.cfg = cfg
        self.label_smoothing = label_smoothing
        self.setup()

    teacher: nn.Module | None
    # Logits-only methods run the teacher on chunks of this many images (0: whole batches); set by
    # the trainer from ``train.teacher_chunk``. In eval mode each image's logits do not depend on
    # its chunk, and on CPUs a small chunk's activations stay in cache.
    teacher_chunk: int = 0

    def setup(self) -> None:
        """Build the method's own parts (peers, heads, taps): override instead of ``__init__``."""

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()
        return self

    @property
    def params(self):
        """This method's own settings (``distill.<name>``), defaults filled in."""
        extra = (self.cfg.model_extra or {}).get(self.name) if self.cfg is not None else None
        return extra if extra is not None else self.Params()

    def set_progress(self, epoch: int, epochs: int) -> None:
        """Called at the start of each epoch (1-based), for schedules inside a method."""
        self.epoch, self.epochs = epoch, epochs

    def close(self) -> None:
        """Release hooks on the networks once training is over."""

    def give_indices(self, idx: torch.Tensor) -> None:
        """The next batch's indices into the training split (for ``needs_indices`` methods)."""
        self.__dict__["batch_indices"] = idx

    def teacher_logits(self, x: torch.Tensor) -> torch.Tensor:
        cached = self.__dict__.pop("cached_teacher_logits", None)  # set by the trainer per step
        if cached is not None:
            return cached
        with torch.no_grad():
            if self.logits_only and 0 < self.teacher_chunk < len(x):
                return torch.cat([self.teacher(part) for part in x.split(self.teacher_chunk)])
            return self.teacher(x)

    def cross_entropy(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Return (student logits, total loss, named loss terms for logging)."""
        raise NotImplementedError

    def extra_parameters(self) -> int:
        student = {id(p) for p in self.student.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in student)
