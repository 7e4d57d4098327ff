"""Parallel image decoding into uint8 arrays (PIL in worker processes, one pass per file): every
format Pillow reads (a GIF or other animation: its first frame), upright by the EXIF orientation."""

from __future__ import annotations

import itertools
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps
from tqdm.auto import tqdm

from kdpipe.errors import DataError

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
CHUNK = 512
PROBE_CHUNK = 4096  # headers only: cheap per file
ORIENTATION = 0x0112  # the EXIF tag
# Pillow's stub formats are recognised, never decoded: a file of theirs is not an image to us.
STUB_FORMATS = {"BUFR", "GRIB", "HDF5", "MPEG", "WMF"}
IMAGE_EXTENSIONS = tuple(sorted(
    ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN and fmt not in STUB_FORMATS
))


def is_image_file(name: str) -> bool:
    """By extension (any case): a file Pillow can decode."""
    return name.lower().endswith(IMAGE_EXTENSIONS)


def unreadable_error(dataset: str, bad: list[tuple[str, str]], shown: int = 5) -> DataError:
    """The error naming unreadable files: (path, reason) pairs."""
    listed = "; ".join(f"{path} ({error})" for path, error in bad[:shown])
    more = f" and {len(bad) - shown} more" if len(bad) > shown else ""
    return DataError(
        f"{dataset}: {len(bad)} unreadable image(s): {listed}{more}. "
        "Fix or remove them, or set data.skip_corrupt: true to skip them"
    )


@dataclass
class Decoded:
    path: str
    array: np.ndarray | None  # (C, H, W) uint8, or None when the file could not be read
    gray: bool = False
    error: str | None = None


def to_uint8_mode(img: Image.Image, channels: int | None) -> tuple[Image.Image, bool]:
    """Convert any PIL mode to L or RGB; with ``channels`` unset, gray stays gray."""
    gray = img.mode in GRAY_MODES or (img.mode == "P" and _gray_palette(img))
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        # 16-bit / float gray: scale the full range to 8 bits rather than clip
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        img = Image.fromarray(np.rint((arr - lo) / ((hi - lo) or 1.0) * 255).astype(np.uint8), "L")
    want_gray = gray if channels is None else channels == 1
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        # composite on white so transparent areas do not turn black
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    return img.convert("L" if want_gray else "RGB"), gray


def _gray_palette(img: Image.Image) -> bool:
    palette = img.getpalette() or []
    triples = [palette[i : i + 3] for i in range(0, len(palette), 3)]
    return bool(triples) and all(r == g == b for r, g, b in triples)


RESIZE_MODES = ("squash", "center_crop", "pad")


def _resized(img: Image.Image, target: tuple[int, int], mode: str) -> Image.Image:
    """``target`` (width, height) by ``mode``: stretched; the shorter side scaled to fit and the
    centre cut out; or the longer side scaled to fit and black borders added (Pillow's
    ``ImageOps.fit`` / ``ImageOps.pad``)."""
    if mode == "center_crop":
        return ImageOps.fit(img, target, Image.Resampling.BILINEAR)
    if mode == "pad":
        return ImageOps.pad(img, target, Image.Resampling.BILINEAR, color=0)
    return img.resize(target, Image.Resampling.BILINEAR, reducing_gap=3.0)


def decode_file(path: str, channels: int | None, size: int | tuple[int, int] | None, resize: str = "squash") -> Decoded:
    """One image as uint8 (C, H, W); ``size`` is a square side or (height, width), reached by
    ``resize`` (one of ``RESIZE_MODES``)."""
    target = None if size is None else (size, size) if isinstance(size, int) else (size[1], size[0])
    try:
        with Image.open(path) as img:
            img.load()  # forces a full decode: a truncated file fails here, not later
            ImageOps.exif_transpose(img, in_place=True)  # phone photos: pixels as the camera held them
            img, gray = to_uint8_mode(img, channels)
            if target is not None and img.size != target:
                img = _resized(img, target, resize)
            arr = np.asarray(img, dtype=np.uint8)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported by name
        return Decoded(path, None, error=f"{type(exc).__name__}: {exc}")
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return Decoded(path, np.ascontiguousarray(arr), gray)


def _decode_chunk(args: tuple[list[str], int | None, int | tuple[int, int] | None]) -> list[Decoded]:
    paths, channels, size, resize = args
    return [decode_file(p, channels, size, resize) for p in paths]


@dataclass
class Probe:
    path: str
    height: int = 0  # upright, after the EXIF orientation
    width: int = 0
    gray: bool = False
    error: str | None = None


def probe_file(path: str) -> Probe:
    """Size and gray-ness from the file's header, without decoding the pixels."""
    try:
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(ORIENTATION, 1) in (5, 6, 7, 8):  # stored turned by 90 degrees
                width, height = height, width
            palette = img.palette.colors if img.mode == "P" and img.palette is not None else None
            gray = img.mode in GRAY_MODES or bool(palette) and all(r == g == b for r, g, b, *_ in palette)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is reported by name
        return Probe(path, error=f"{type(exc).__name__}: {exc}")
    return Probe(path, height, width, gray)


def _probe_chunk(paths: list[str]) -> list[Probe]:
    return [probe_file(p) for p in paths]


def in_order(work: Callable, chunks: list, workers: int, desc: str, total: int) -> Iterator:
    """``work`` over ``chunks`` across ``workers`` processes, results in order, at most two chunks a
    worker in flight (so memory stays bounded however many images there are)."""
    workers = workers or os.cpu_count() or 1
    bar = tqdm(total=total, desc=desc, unit="img", disable=None, leave=False)
    try:
        if workers == 1 or len(chunks) <= 1:
            for chunk in chunks:
                part = work(chunk)
                bar.update(len(part))
                yield part
            return
        with ProcessPoolExecutor(max_workers=workers) as pool:
            pending: deque = deque()
            todo = iter(chunks)
            for chunk in itertools.islice(todo, 2 * workers):
                pending.append(pool.submit(work, chunk))
            while pending:
                part = pending.popleft().result()
                for chunk in itertools.islice(todo, 1):
                    pending.append(pool.submit(work, chunk))
                bar.update(len(part))
                yield part
    finally:
        bar.close()


def iter_decoded(
    paths: list[str], channels: int | None, size: int | tuple[int, int] | None, workers: int = 0, desc: str = "decode",
    resize: str = "squash",
) -> Iterator[list[Decoded]]:
    """Decode ``paths`` in order, ``CHUNK`` files at a time, across ``workers`` processes (0 = all cores)."""
    chunks = [(paths[i : i + CHUNK], channels, size, resize) for i in range(0, len(paths), CHUNK)]
    return in_order(_decode_chunk, chunks, workers, desc, len(paths))


def decode_files(
    paths: list[str], channels: int | None, size: int | tuple[int, int] | None, workers: int = 0, desc: str = "decode",
    resize: str = "squash",
) -> list[Decoded]:
    return [d for part in iter_decoded(paths, channels, size, workers, desc, resize) for d in part]


def probe_files(paths: list[str], workers: int = 0, desc: str = "probe") -> list[Probe]:
    chunks = [paths[i : i + PROBE_CHUNK] for i in range(0, len(paths), PROBE_CHUNK)]
    return [p for part in in_order(_probe_chunk, chunks, workers, desc, len(paths)) for p in part]
