"""kdpipe: reproducible knowledge distillation (teacher -> assistant -> student -> int8)."""

__version__ = "0.1.0"
