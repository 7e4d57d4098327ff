"""Registry of data sources by ``data.dataset`` name.

A source returns raw uint8 images (N, C, H, W) with integer labels; it may provide its own
test (and validation) split, otherwise prepare carves them out with a seeded stratified split.
Each source lives in its own module and registers itself on import.
"""

from kdpipe.data.sources import digits, imagefolder, medmnist, torchvision_sets  # noqa: F401  (registers)
from kdpipe.data.sources.base import SOURCES, SourceData, register_source

__all__ = ["SOURCES", "SourceData", "register_source"]
