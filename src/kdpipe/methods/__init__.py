"""Distillation methods, one module each, registered by file name (``distill.method: at`` is
``methods/at.py``); shared machinery lives in ``methods/common/``. Adding a method is one new
file: it is listed by name without being imported, and imported only by a stage that uses it.

The contract between the trainer and a method: the trainer hands ``Method.forward`` one
``Batch`` and gets back ``(student logits, total loss, named loss terms)``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from kdpipe.registry import Registry

if TYPE_CHECKING:
    import torch
    from torch import nn

    from kdpipe.config import DistillConfig
    from kdpipe.methods.common.base import Method

METHODS: Registry[type[Method]] = Registry("distillation method", __name__, directory=Path(__file__).parent)


@dataclass(frozen=True)
class Batch:
    """One training step's input, on the device."""

    images: torch.Tensor  # (B, C, H, W), normalised, augmented
    labels: torch.Tensor  # (B,)
    indices: torch.Tensor | None = None  # positions in the training split (``needs_indices`` methods)
    teacher_logits: torch.Tensor | None = None  # cached teacher outputs for these images (``cache_views``)


@dataclass
class MethodContext:
    """What a method may need besides the two networks and its settings."""

    where: str = "distill"  # the params section of this link, for error messages
    input_shape: tuple[int, int, int] | None = None  # (C, H, W), to probe feature shapes
    build_network: Callable[[str], nn.Module] | None = None  # a fresh model of an arch for this data
    student_arch: str | None = None
    teacher_arch: str | None = None
    num_train: int | None = None  # training-set size, for per-sample state (crd's memory banks)
    teacher_chunk: int = 0  # logits-only methods: run the teacher on chunks of this many images (0: whole batch)


def build_method(
    name: str, student, teacher=None, cfg: DistillConfig | None = None, label_smoothing: float = 0.0,
    context: MethodContext | None = None,
) -> Method:
    """Method ``name`` around ``student`` and the frozen ``teacher`` network (or None); its own
    settings (``<link>.<name>``) are validated here, by the method's schema."""
    return METHODS[name](student, teacher, cfg, label_smoothing, context)


def link_with(cfg: DistillConfig, name: str) -> DistillConfig:
    """The link ``cfg`` with method ``name``, its teacher cache (``cache_views``) kept only where the
    method reads nothing but the teacher's logits: one ``distill`` section serves every method of
    a benchmark, and a feature method runs its teacher live. Of the per-method sections only
    ``name``'s is kept, so the link checks, and its stage imports, that method's code alone."""
    others = set(cfg.model_extra or {}) - {name}
    return type(cfg).model_validate({
        **cfg.model_dump(exclude=others), "method": name,
        "cache_views": cfg.cache_views if METHODS[name].logits_only else 0,
    })


def check_link(cfg: DistillConfig, where: str) -> None:
    """What only the link's method can check: its own section and the teacher cache. Raises
    ConfigError naming the key. (Imports that method's module, and those of other sections set.)"""
    from kdpipe.methods.common.base import method_settings, standardizes

    method = METHODS[cfg.method]
    standardizes(method, cfg, where)
    if cfg.cache_views and method.needs_teacher and not method.logits_only:
        from kdpipe.errors import ConfigError

        raise ConfigError(
            f"{where}.cache_views: method '{cfg.method}' reads the teacher's features, which a logit cache cannot "
            f"hold; use cache_views: 0 or a logits-only method such as kd or dkd"
        )
    for section in cfg.model_extra or {}:
        method_settings(METHODS[section], cfg, where)
