"""What a data source returns, and the registry the sources add themselves to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from kdpipe.data.sources import SOURCES

if TYPE_CHECKING:
    from kdpipe.config import DataConfig

Arrays = tuple[np.ndarray, np.ndarray]  # uint8 images (N, C, H, W), int64 labels (N,)


@dataclass
class SourceData:
    class_names: list[str]
    train: Arrays
    test: Arrays | None = None
    val: Arrays | None = None
    report: dict[str, Any] = field(default_factory=dict)  # extra facts for metrics/prepare.json


def register_source(name: str) -> Callable[[Callable[[DataConfig], SourceData]], Callable[[DataConfig], SourceData]]:
    return SOURCES.register(name)
