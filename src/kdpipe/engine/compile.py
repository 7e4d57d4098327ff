"""``train.compile``: torch.compile where it pays, without changing what gets saved."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from kdpipe.methods.base import Method


def _hooked(model: nn.Module) -> bool:
    """Feature methods tap the teacher's layers with forward hooks; a frozen graph would skip them."""
    return any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@contextlib.contextmanager
def compiled(method: Method, enabled: bool) -> Iterator[None]:
    """Within the block the student's forward is compiled in place (the module, its parameters
    and its state_dict stay the same objects) and the teacher, when nothing hooks its layers, is
    compiled for inference with weight freezing (constant-folded, prepacked weights: on a CPU with
    AMX this runs a ResNet-50 teacher about 1.7x faster than eager bf16)."""
    if not enabled:
        yield
        return
    student, teacher = method.student, method.teacher
    # dynamic=False: validation batches have other sizes; one static graph per shape stays fast
    student.forward = torch.compile(student.forward, dynamic=False)
    if teacher is not None and not _hooked(teacher):
        method.__dict__["teacher"] = torch.compile(teacher, dynamic=False, options={"freezing": True})
    try:
        yield
    finally:
        del student.forward  # back to the class's eager forward
        method.__dict__["teacher"] = teacher
