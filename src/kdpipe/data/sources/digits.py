"""``digits``: scikit-learn's bundled handwritten digits, the embedded default (no network)."""

from __future__ import annotations

import numpy as np

from kdpipe.data.sources.base import SourceData, register_source


@register_source("digits")
def load_digits(cfg) -> SourceData:
    """1,797 real 8x8 grayscale images with values 0..16, rescaled to 0..255."""
    from sklearn.datasets import load_digits as sk_digits

    bunch = sk_digits()
    images = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None, :, :]
    labels = bunch.target.astype(np.int64)
    return SourceData(class_names=[str(c) for c in bunch.target_names], train=(images, labels))
