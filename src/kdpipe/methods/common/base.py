"""The method base class and the frozen-teacher wrapper.

A method wraps the student (and, if it needs one, a frozen teacher) and turns a ``Batch`` into
the student's logits, a loss and named loss terms. Parts it adds (regressors, projections,
heads) are its own submodules: they train with the student through ``method.parameters()`` and
are never saved with it. Adding a method is one module ``methods/<name>.py`` that subclasses
``Method`` and registers ``<name>``.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from pydantic import BaseModel, ValidationError
from torch import nn

from kdpipe.config import PER_PAIR
from kdpipe.errors import ConfigError
from kdpipe.methods import METHODS, Batch, MethodContext
from kdpipe.models import MODEL_FILE_ARCHS

if TYPE_CHECKING:
    from kdpipe.config import DistillConfig


def register_method(name: str):
    def wrap(cls: type[Method]) -> type[Method]:
        cls.name = name
        return METHODS.add(name, cls)

    return wrap


def method_settings(method: type[Method], cfg: DistillConfig | None, where: str) -> BaseModel | None:
    """``<where>.<method>`` validated by the method's schema (defaults where the section is absent).
    A benchmark's ``per_pair`` settings are not the method's own: its cells apply them
    (``kdpipe.config.for_pair``), and any other run of the link leaves them out."""
    raw = (getattr(cfg, "model_extra", None) or {}).get(method.name)
    if isinstance(raw, dict):
        raw = {k: v for k, v in raw.items() if k != PER_PAIR}
    if method.Params is None:
        if raw:  # an empty section ({}: benchmark matrices list one per method) sets nothing
            raise ConfigError(f"{where}.{method.name}: method '{method.name}' takes no settings of its own")
        return None
    try:
        return method.Params.model_validate(raw or {})
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        if err["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(err["loc"][-1]), list(method.Params.model_fields), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f"{where}.{method.name}.{field}: unknown key{hint}") from None
        msg = err["msg"].removeprefix("Value error, ")
        raise ConfigError(f"{where}.{method.name}.{field}: {msg} (got {err.get('input')!r})") from None


def standardizes(method: type[Method], cfg: DistillConfig | None, where: str) -> bool:
    """Whether the link asks for logit standardisation (``<where>.logit_standardize``); a
    ConfigError naming the key when it does and ``method`` cannot apply it."""
    if not getattr(cfg, "logit_standardize", False):
        return False
    if not method.standardizes_logits:
        raise ConfigError(
            f"{where}.logit_standardize: method '{method.name}' has no logit distillation term to standardise; "
            f"set it only for kd, dkd, dist or ctkd"
        )
    return True


class Teacher:
    """The frozen teacher of a link: eval mode and no gradients, always; logits for a batch, from
    the batch's cached logits when it carries them, else by running the network (on chunks of
    ``chunk`` images when that is set: in eval mode an image's logits do not depend on its
    chunk, and on CPUs a small chunk's activations stay in cache). Kept outside the method's
    module tree, so it never reaches the optimiser or the method's state_dict."""

    def __init__(self, network: nn.Module, chunk: int = 0):
        self.network = network.eval().requires_grad_(False)
        self.chunk = chunk
        self._run: nn.Module = self.network

    def to(self, *args: Any, **kwargs: Any) -> Teacher:
        self.network.to(*args, **kwargs)
        return self

    @torch.no_grad()
    def logits(self, batch: Batch) -> torch.Tensor:
        if batch.teacher_logits is not None:
            return batch.teacher_logits
        x = batch.images
        if 0 < self.chunk < len(x):
            return torch.cat([self._run(part) for part in x.split(self.chunk)])
        return self._run(x)

    def hooked(self) -> bool:
        """Feature methods tap the teacher's layers with forward hooks."""
        return any(m._forward_hooks or m._forward_pre_hooks for m in self.network.modules())

    @contextlib.contextmanager
    def running(self, runner: nn.Module) -> Iterator[None]:
        """Within the block ``logits`` runs ``runner`` (a compiled copy of the network) instead."""
        self._run = runner
        try:
            yield
        finally:
            self._run = self.network


class Method(nn.Module):
    name: ClassVar[str] = ""
    needs_teacher: ClassVar[bool] = True
    # Only the teacher's logits are used: they can come from a cache (``<link>.cache_views``).
    logits_only: ClassVar[bool] = False
    # Per-sample state (crd's memory banks): the trainer fills ``Batch.indices``.
    needs_indices: ClassVar[bool] = False
    # Buffers DDP must not broadcast from rank 0 at every step (large, and kept in step otherwise).
    ddp_local_buffers: ClassVar[tuple[str, ...]] = ()
    # Schema of the method's own settings under ``<link>.<name>`` (None: it has none).
    Params: ClassVar[type[BaseModel] | None] = None
    # Its distillation term compares logits, which ``<link>.logit_standardize`` may z-score first.
    standardizes_logits: ClassVar[bool] = False

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
        if teacher is not None and not self.logits_only and self.context.teacher_arch in MODEL_FILE_ARCHS:
            raise ConfigError(
                f"{self.context.where}.method: '{self.name}' reads the teacher's features, and the teacher is an "
                f"imported {self.context.teacher_arch} file, which gives logits only: use a logits-only method such "
                "as kd, dkd or dist")
        self.student = student
        self.cfg = cfg
        # this method's own settings (``<link>.<name>``), validated, defaults filled in
        self.params = method_settings(type(self), cfg, self.context.where)
        # ``<link>.logit_standardize``: z-score both logits inside the distillation term
        self.standardize = standardizes(type(self), cfg, self.context.where)
        self.teacher: Teacher | None = None
        if teacher is not None:
            self.teacher = Teacher(teacher, self.context.teacher_chunk if self.logits_only else 0)
        self.label_smoothing = label_smoothing
        self.setup()

    def setup(self) -> None:
        """Build the method's own parts (peers, heads, taps): override instead of ``__init__``."""

    def train(self, mode: bool = True) -> Method:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.network.eval()
        return self

    def set_progress(self, epoch: int, epochs: int) -> None:
        """Called at the start of each epoch (1-based), for schedules inside a method."""
        self.epoch, self.epochs = epoch, epochs

    def close(self) -> None:
        """Release hooks on the networks once training is over."""

    def cross_entropy(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)

    def forward(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Return (student logits, total loss, named loss terms for logging)."""
        raise NotImplementedError

    def extra_parameters(self) -> int:
        student = {id(p) for p in self.student.parameters()}
        return sum(p.numel() for p in self.parameters() if id(p) not in student)
