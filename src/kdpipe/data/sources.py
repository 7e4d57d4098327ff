"""Registry of data sources by ``data.dataset`` name.

A source returns raw uint8 images (N, C, H, W) with integer labels; it may provide its own
test (and validation) split, otherwise prepare carves them out with a seeded stratified split.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from kdpipe.config import DataConfig


@dataclass
class SourceData:
    class_names: list[str]
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray] | None = None
    val: tuple[np.ndarray, np.ndarray] | None = None


SOURCES: dict[str, Callable[[DataConfig], SourceData]] = {}


def register_source(name: str):
    def wrap(fn: Callable[[DataConfig], SourceData]):
        SOURCES[name] = fn
        return fn

    return wrap


@register_source("digits")
def load_digits(cfg: DataConfig) -> SourceData:
    """scikit-learn's bundled handwritten digits: 1,797 real 8x8 grayscale images in 0..16."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    return SourceData(class_names=[str(c) for c in bunch.target_names], train=(images, labels))
