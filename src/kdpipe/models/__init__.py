"""Models: the architecture registry with small-input adaptation, and checkpoints."""

from kdpipe.models.registry import MODELS, build_model, count_parameters

__all__ = ["MODELS", "build_model", "count_parameters"]
