"""Prepare: raw source -> seeded stratified train/val/test uint8 arrays plus metadata."""

from __future__ import annotations

import logging
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from sklearn.model_selection import train_test_split

from kdpipe.config import DataConfig
from kdpipe.data.prepared import META_FILE, SPLITS, PreparedMeta
from kdpipe.data.sources import SOURCES
from kdpipe.errors import DataError
from kdpipe.io import sha256_file, write_json

log = logging.getLogger("kdpipe")
Split = tuple[np.ndarray, np.ndarray]


def stratified_split(x: np.ndarray, y: np.ndarray, take: float, seed: int) -> tuple[Split, Split]:
    """Split off ``take`` samples (a fraction or a count) with class proportions kept."""
    try:
        x_rest, x_take, y_rest, y_take = train_test_split(x, y, test_size=take, stratify=y, random_state=seed)
    except ValueError as exc:
        raise DataError(f"cannot make a stratified split of {len(y)} samples: {exc}") from None
    return (x_rest, y_rest), (x_take, y_take)


def subsample(split: Split, limit: int | None, seed: int) -> Split:
    x, y = split
    if limit is None or limit >= len(y):
        return split
    _, kept = stratified_split(x, y, limit, seed)
    return kept


def conform(x: np.ndarray, image_size: int | None, channels: int | None, batch: int = 4096) -> np.ndarray:
    """Resize (antialiased) and convert channels of uint8 (N, C, H, W) arrays, in batches."""
    need_size = image_size is not None and x.shape[2:] != (image_size, image_size)
    need_channels = channels is not None and x.shape[1] != channels
    if not (need_size or need_channels):
        return x
    out = []
    for start in range(0, len(x), batch):
        t = torch.from_numpy(np.ascontiguousarray(x[start : start + batch]))
        if need_channels:
            t = TF.rgb_to_grayscale(t) if channels == 1 else TF.grayscale_to_rgb(t)
        if need_size:
            t = TF.resize(t, [image_size, image_size], antialias=True)
        out.append(t.numpy())
    return np.concatenate(out)


def make_splits(cfg: DataConfig, seed: int) -> tuple[list[str], dict[str, Split], dict]:
    source = SOURCES[cfg.dataset](cfg)
    if len(source.class_names) < 2:
        raise DataError(f"{cfg.dataset}: found {len(source.class_names)} class(es); classification needs at least 2")
    for name in ("train", "val", "test"):
        arrays = getattr(source, name)
        if arrays is not None:
            setattr(source, name, (conform(arrays[0], cfg.image_size, cfg.channels), arrays[1]))
    train = source.train
    test = source.test
    if test is None:
        train, test = stratified_split(*train, cfg.test_fraction, seed)
    val = source.val
    if val is None:
        # val_fraction is a share of all labelled data, so it means the same with or without a test split
        share = cfg.val_fraction / (1.0 - cfg.test_fraction) if source.test is None else cfg.val_fraction
        train, val = stratified_split(*train, share, seed + 1)
    # A training subset shrinks the validation split in proportion, so a quick run stays quick.
    val_limit = None
    if cfg.max_train_samples is not None and cfg.max_train_samples < len(train[1]):
        val_limit = max(len(np.unique(val[1])), round(len(val[1]) * cfg.max_train_samples / len(train[1])))
    splits = {
        "train": subsample(train, cfg.max_train_samples, seed + 2),
        "val": subsample(val, val_limit, seed + 4),
        "test": subsample(test, cfg.max_test_samples, seed + 3),
    }
    for name, (x, y) in splits.items():
        if x.dtype != np.uint8 or x.ndim != 4:
            raise DataError(f"{cfg.dataset}: {name} images must be uint8 (N, C, H, W), got {x.dtype} {x.shape}")
        missing = sorted(set(range(len(source.class_names))) - set(np.unique(y).tolist()))
        if missing:
            names = ", ".join(source.class_names[i] for i in missing)
            raise DataError(f"{cfg.dataset}: {name} split has no images of class(es) {names}")
    return source.class_names, splits, source.report


def channel_stats(x: np.ndarray, chunk: int = 4096) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, accumulated in float64 over chunks of images
    (a float64 copy of a whole CIFAR-sized split would take over a gigabyte)."""
    total = np.zeros(x.shape[1])
    squares = np.zeros(x.shape[1])
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk].astype(np.float64) / 255.0
        total += part.sum(axis=(0, 2, 3))
        squares += np.square(part).sum(axis=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean**2, 0.0))
    return mean.round(6).tolist(), np.maximum(std, 1e-6).round(6).tolist()


def prepare(cfg: DataConfig, seed: int, out_dir: str | Path, metrics_file: str | Path) -> PreparedMeta:
    start = time.perf_counter()
    class_names, splits, report = make_splits(cfg, seed)
    x_train = splits["train"][0]
    mean, std = channel_stats(x_train)
    meta = PreparedMeta(
        dataset=cfg.dataset,
        class_names=class_names,
        channels=int(x_train.shape[1]),
        height=int(x_train.shape[2]),
        width=int(x_train.shape[3]),
        mean=mean,
        std=std,
        counts={name: len(y) for name, (_, y) in splits.items()},
    )
    # Build the whole folder aside and swap it in, so a failure never leaves a partial data set.
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    for stale in out_dir.parent.glob(f".{out_dir.name}.*.tmp"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    # beside out_dir (one file system, so the swap is a rename); *.tmp: ignored by git
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    try:
        for name in SPLITS:
            x, y = splits[name]
            np.save(tmp / f"{name}_x.npy", np.ascontiguousarray(x))
            np.save(tmp / f"{name}_y.npy", y.astype(np.int64))
        meta.files = {path.name: sha256_file(path) for path in sorted(tmp.glob("*.npy"))}
        write_json(tmp / META_FILE, meta.to_dict())
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    seconds = time.perf_counter() - start
    per_class = {
        name: {class_names[c]: int(n) for c, n in zip(*np.unique(y, return_counts=True))}
        for name, (_, y) in splits.items()
    }
    write_json(
        metrics_file,
        {
            "dataset": cfg.dataset,
            "num_classes": len(class_names),
            "image_shape": [meta.channels, meta.height, meta.width],
            "counts": meta.counts,
            "per_class": per_class,
            "seconds": round(seconds, 3),
            "images_per_second": round(report.get("decoded_images", sum(meta.counts.values())) / seconds, 1),
            "peak_memory_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "skipped_corrupt": int(report.get("skipped_corrupt", 0)),
            **({"skipped_files": report["skipped_files"]} if report.get("skipped_files") else {}),
            # files in class folders that are no image Pillow reads (the imagefolder source)
            **({"skipped_not_image": report["skipped_not_image"]} if "skipped_not_image" in report else {}),
            **({"skipped_not_image_files": report["skipped_not_image_files"]}
               if report.get("skipped_not_image_files") else {}),
        },
    )
    log.info("prepared %s: %s, image %sx%sx%s", cfg.dataset, meta.counts, meta.channels, meta.height, meta.width)
    return meta
