"""Distillation methods, registered by name (``distill.method``); one module each."""

from kdpipe.methods import kd, none  # noqa: F401  (registers the methods)
from kdpipe.methods.base import METHODS, Method, register_method

__all__ = ["METHODS", "Method", "build_method", "register_method"]


def build_method(name: str, student, teacher=None, cfg=None, label_smoothing: float = 0.0) -> Method:
    return METHODS[name](student, teacher, cfg, label_smoothing)
