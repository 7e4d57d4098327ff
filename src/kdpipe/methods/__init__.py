"""Distillation methods, registered by name (``distill.method``); one module each."""

from kdpipe.methods import at, byot, cosine, crd, dkd, dml, feature_mse, fitnets, kd, none, pkt, rkd, sp  # noqa: F401
from kdpipe.methods.base import METHODS, Method, MethodContext, register_method

__all__ = ["METHODS", "Method", "MethodContext", "build_method", "register_method"]


def build_method(
    name: str, student, teacher=None, cfg=None, label_smoothing: float = 0.0, context: MethodContext | None = None
) -> Method:
    return METHODS[name](student, teacher, cfg, label_smoothing, context)
