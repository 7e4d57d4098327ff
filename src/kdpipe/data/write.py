"""Writing a prepared split: images streamed into its ``.npy`` file a chunk at a time (decoded
in parallel, or resized from an in-memory source), hashed and summed on the way, so that memory
stays bounded by a chunk and nothing is read back."""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from kdpipe.data.sources.base import Images, ImageFiles
from kdpipe.data.sources.decode import iter_decoded

ARRAY_CHUNK = 4096  # in-memory images resized at once


class SplitWriter:
    """uint8 images (N, C, H, W) appended to a ``.npy`` file, byte for byte what ``np.save`` of the
    whole array writes; the file's SHA-256 and per-channel pixel histograms come with it."""

    def __init__(self, path: Path, count: int, shape: tuple[int, int, int]):
        self.path, self.count, self.shape = Path(path), count, tuple(shape)
        self.written = 0
        self.histograms = np.zeros((shape[0], 256), dtype=np.int64)  # exact, whatever the chunking
        self._digest = hashlib.sha256()
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by finish()
        header = io.BytesIO()
        np.lib.format.write_array_header_1_0(header, {"descr": "|u1", "fortran_order": False, "shape": (count, *shape)})
        self._write(header.getvalue())

    def _write(self, data) -> None:
        self._digest.update(data)
        self._file.write(data)

    def append(self, images: np.ndarray) -> None:
        if images.dtype != np.uint8 or tuple(images.shape[1:]) != self.shape:
            raise ValueError(f"{self.path.name}: expected uint8 (N, {self.shape}), got {images.dtype} {images.shape}")
        if self.written + len(images) > self.count:
            raise ValueError(f"{self.path.name}: more than the {self.count} images announced")
        images = np.ascontiguousarray(images)
        for c in range(self.shape[0]):
            self.histograms[c] += np.bincount(images[:, c].ravel(), minlength=256)
        self._write(memoryview(images).cast("B"))
        self.written += len(images)

    def finish(self) -> str:
        """Close the file; its SHA-256. Every announced image must have been written."""
        self._file.close()
        if self.written != self.count:
            raise ValueError(f"{self.path.name}: {self.written} of the {self.count} images announced were written")
        return self._digest.hexdigest()

    def abort(self) -> None:
        self._file.close()


def channel_stats(histograms: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units from exact per-channel histograms of uint8 pixels."""
    values = np.arange(256, dtype=np.float64) / 255.0
    count = histograms.sum(axis=1)
    mean = histograms @ values / count
    std = np.sqrt(np.maximum(histograms @ values**2 / count - mean**2, 0.0))
    return mean.round(6).tolist(), np.maximum(std, 1e-6).round(6).tolist()


def conform(x: np.ndarray, image_size: int | None, channels: int | None) -> np.ndarray:
    """Resize (antialiased) and convert channels of uint8 (N, C, H, W) arrays."""
    need_size = image_size is not None and x.shape[2:] != (image_size, image_size)
    need_channels = channels is not None and x.shape[1] != channels
    if not (need_size or need_channels):
        return x
    t = torch.from_numpy(np.ascontiguousarray(x))
    if need_channels:
        t = TF.rgb_to_grayscale(t) if channels == 1 else TF.grayscale_to_rgb(t)
    if need_size:
        t = TF.resize(t, [image_size, image_size], antialias=True)
    return t.numpy()


def written_shape(images: Images, image_size: int | None, channels: int | None) -> tuple[int, int, int]:
    """The (C, H, W) a split's images are stored at."""
    if isinstance(images, ImageFiles):
        return images.shape[1:]
    _, c, h, w = images.shape
    return (channels or c, image_size or h, image_size or w)


@dataclass
class WrittenSplit:
    sha256: str
    kept: np.ndarray  # the rows written (all but the unreadable files skipped)
    histograms: np.ndarray
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (path, error)


def write_split(
    path: Path, images: Images, image_size: int | None, channels: int | None, workers: int, desc: str
) -> WrittenSplit:
    """Stream ``images`` into ``path``. Files that fail to decode are left out and returned (the
    caller decides whether that is an error); the file then holds the others only."""
    shape = written_shape(images, image_size, channels)
    writer = SplitWriter(path, len(images), shape)
    kept: list[int] = []
    unreadable: list[tuple[str, str]] = []
    try:
        if isinstance(images, ImageFiles):
            row = 0
            for part in iter_decoded(list(images.paths), **images.decode_args(), workers=workers, desc=desc):
                good = []
                for decoded in part:
                    if decoded.array is None:
                        unreadable.append((decoded.path, decoded.error))
                    else:
                        good.append(decoded.array)
                        kept.append(row)
                    row += 1
                if good:
                    writer.append(np.stack(good))
        else:
            for start in range(0, len(images), ARRAY_CHUNK):
                writer.append(conform(images[start : start + ARRAY_CHUNK], image_size, channels))
            kept = list(range(len(images)))
    except BaseException:
        writer.abort()
        raise
    if unreadable:  # the header announced every file: rewrite without the gaps (rare)
        writer.abort()
        return WrittenSplit(_rewrite(path, len(kept), shape), np.asarray(kept, np.int64),
                            writer.histograms, unreadable)
    return WrittenSplit(writer.finish(), np.arange(len(images)), writer.histograms)


def _rewrite(path: Path, count: int, shape: tuple[int, int, int]) -> str:
    """Re-write ``path`` (announced longer than written) as a file of ``count`` images."""
    offset = path.stat().st_size - count * int(np.prod(shape))
    source = np.memmap(path, dtype=np.uint8, mode="r", offset=offset, shape=(count, *shape))
    fixed = path.with_name(path.name + ".fixed")
    writer = SplitWriter(fixed, count, shape)
    try:
        for start in range(0, count, ARRAY_CHUNK):
            writer.append(np.asarray(source[start : start + ARRAY_CHUNK]))
        digest = writer.finish()
    except BaseException:
        writer.abort()
        fixed.unlink(missing_ok=True)
        raise
    finally:
        del source
    fixed.replace(path)
    return digest
