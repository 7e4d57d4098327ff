"""Loading the prepared splits: memory-mapped uint8 arrays checked against their metadata
(SHA-256, shape, dtype, label range), so a corrupted file is refused instead of trained on."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from kdpipe.errors import DataError, MissingInputError
from kdpipe.io import read_json, sha256_file

SPLITS = ("train", "val", "test")
# torchvision's ImageNet statistics (RGB, [0, 1] units): what its pretrained weights, and timm's
# CNNs, expect inputs normalised with (data.normalize: imagenet)
IMAGENET_MEAN, IMAGENET_STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
META_FILE = "meta.json"


@dataclass
class PreparedMeta:
    dataset: str
    class_names: list[str]
    channels: int
    height: int
    width: int
    mean: list[float]
    std: list[float]
    counts: dict[str, int]
    files: dict[str, str] = field(default_factory=dict)  # file name -> SHA-256, written by prepare
    resize: str | None = None  # how the images reached their size (data.resize); None: not resized

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict:
        # an image set that was not resized is written as before resize existed: same bytes, same hash
        return {k: v for k, v in asdict(self).items() if not (k == "resize" and v is None)}


@dataclass
class Split:
    images: torch.Tensor  # uint8 (N, C, H, W), over a memory-mapped file unless loaded in memory
    labels: torch.Tensor  # int64 (N,)

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class PreparedData:
    meta: PreparedMeta
    splits: dict[str, Split]

    def __getitem__(self, name: str) -> Split:
        return self.splits[name]


def load_meta(root: str | Path) -> PreparedMeta:
    path = Path(root) / META_FILE
    if not path.is_file():
        raise MissingInputError(f"{path} not found: run `dvc repro prepare` first")
    try:
        return PreparedMeta(**read_json(path))
    except (ValueError, TypeError) as exc:
        raise DataError(f"{path} is unreadable or from another version: {exc}") from None


def load_prepared(root: str | Path, splits: tuple[str, ...] = SPLITS, in_memory: bool = False) -> PreparedData:
    """The splits as uint8 tensors over memory-mapped files: batches are read from the page cache
    (or the disk), never the whole split into the process's own memory. ``in_memory``: copied
    into memory instead (a small data set read at random, or to compare the two)."""
    root = Path(root)
    meta = load_meta(root)
    loaded = {}
    if not meta.files:
        raise DataError(f"{root / META_FILE} has no file hashes (an older kdpipe made it): re-run `dvc repro prepare`")
    for name in splits:
        xp, yp = root / f"{name}_x.npy", root / f"{name}_y.npy"
        for path in (xp, yp):
            # one sequential read, which also leaves the file in the page cache for training
            if path.is_file() and sha256_file(path) != meta.files.get(path.name):
                raise DataError(
                    f"{path} is corrupted: its SHA-256 differs from the one prepare recorded in {root / META_FILE}; "
                    "re-run `dvc repro prepare` (or `dvc checkout data/prepared`)"
                )
        try:
            # copy-on-write: a writable array for torch, whose pages stay the file's unless written
            x = np.load(xp, mmap_mode="c")
            y = np.load(yp)
        except (OSError, ValueError) as exc:
            raise DataError(f"{xp.parent}: cannot read the {name} split ({exc}); re-run `dvc repro prepare`") from None
        expected = (meta.counts.get(name), *meta.image_shape)
        if x.dtype != np.uint8 or tuple(x.shape) != expected or y.shape != (expected[0],):
            raise DataError(
                f"{xp} does not match {root / META_FILE}: images {x.dtype} {tuple(x.shape)}, labels "
                f"{tuple(y.shape)}, expected uint8 {expected}; re-run `dvc repro prepare`"
            )
        labels = torch.from_numpy(y.astype(np.int64))
        if len(labels) and (labels.min() < 0 or labels.max() >= meta.num_classes):
            raise DataError(f"{yp}: labels outside 0..{meta.num_classes - 1}")
        loaded[name] = Split(torch.from_numpy(np.array(x) if in_memory else x), labels)
    return PreparedData(meta, loaded)
