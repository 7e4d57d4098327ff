"""What a data source returns, and the registry the sources add themselves to."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from kdpipe.data.sources import SOURCES

if TYPE_CHECKING:
    from kdpipe.config import DataConfig



@dataclass(frozen=True)
class ImageFiles:
    """Images still on disk, with their decoded shape known from the headers: prepare decodes
    them a chunk at a time straight into the prepared split (never all at once)."""

    paths: tuple[str, ...]
    channels: int
    height: int
    width: int
    resize: str | None  # how to reach (height, width) (decode.RESIZE_MODES); None: every file has that size

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        return (len(self.paths), self.channels, self.height, self.width)

    def take(self, rows: np.ndarray) -> ImageFiles:
        return replace(self, paths=tuple(self.paths[i] for i in rows))

    def decode_args(self) -> dict:
        """iter_decoded's ``channels``, ``size`` and ``resize`` arguments."""
        size = (self.height, self.width) if self.resize else None
        return {"channels": self.channels, "size": size, "resize": self.resize or "squash"}


Images = np.ndarray | ImageFiles  # uint8 (N, C, H, W) in memory, or files to decode to that
Arrays = tuple[Images, np.ndarray]  # images, int64 labels (N,)


@dataclass
class SourceData:
    class_names: list[str]
    train: Arrays
    test: Arrays | None = None
    val: Arrays | None = None
    report: dict[str, Any] = field(default_factory=dict)  # extra facts for metrics/prepare.json


def register_source(name: str) -> Callable[[Callable[[DataConfig], SourceData]], Callable[[DataConfig], SourceData]]:
    return SOURCES.register(name)
