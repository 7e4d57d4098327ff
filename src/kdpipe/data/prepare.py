"""Prepare: raw source -> seeded stratified train/val/test uint8 arrays plus metadata, streamed to\ndisk a chunk at a time (kdpipe.data.write), so a data set larger than memory prepares."""

from __future__ import annotations

import logging
import resource
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from kdpipe.config import DataConfig
from kdpipe.data.prepared import IMAGENET_MEAN, IMAGENET_STD, META_FILE, SPLITS, PreparedMeta
from kdpipe.data.sources import SOURCES
from kdpipe.data.sources.base import Images, ImageFiles
from kdpipe.data.sources.decode import unreadable_error
from kdpipe.data.write import channel_stats, write_split, written_shape
from kdpipe.errors import ConfigError, DataError
from kdpipe.io import sha256_file, write_json

log = logging.getLogger("kdpipe")
Split = tuple[Images, np.ndarray]
DISK_MARGIN = 256 * 2**20  # left free beside the prepared splits


def take_rows(images: Images, rows: np.ndarray) -> Images:
    return images.take(rows) if isinstance(images, ImageFiles) else images[rows]


def stratified_split(x: Images, y: np.ndarray, take: float, seed: int) -> tuple[Split, Split]:
    """Split off ``take`` samples (a fraction or a count) with class proportions kept (the rows
    depend on the labels and the seed only, so files and arrays split alike)."""
    try:
        rest, taken = train_test_split(np.arange(len(y)), test_size=take, stratify=y, random_state=seed)
    except ValueError as exc:
        raise DataError(f"cannot make a stratified split of {len(y)} samples: {exc}") from None
    return (take_rows(x, rest), y[rest]), (take_rows(x, taken), y[taken])


def subsample(split: Split, limit: int | None, seed: int) -> Split:
    x, y = split
    if limit is None or limit >= len(y):
        return split
    _, kept = stratified_split(x, y, limit, seed)
    return kept


def make_splits(cfg: DataConfig, seed: int) -> tuple[list[str], dict[str, Split], dict]:
    source = SOURCES[cfg.dataset](cfg)
    if len(source.class_names) < 2:
        raise DataError(f"{cfg.dataset}: found {len(source.class_names)} class(es); classification needs at least 2")
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
        if not isinstance(x, ImageFiles) and (x.dtype != np.uint8 or x.ndim != 4):
            raise DataError(f"{cfg.dataset}: {name} images must be uint8 (N, C, H, W), got {x.dtype} {x.shape}")
        check_classes(cfg.dataset, name, y, source.class_names)
    return source.class_names, splits, source.report


def check_classes(dataset: str, split: str, y: np.ndarray, class_names: list[str]) -> None:
    missing = sorted(set(range(len(class_names))) - set(np.unique(y).tolist()))
    if missing:
        names = ", ".join(class_names[i] for i in missing)
        raise DataError(f"{dataset}: {split} split has no images of class(es) {names}")


def check_disk_space(splits: dict[str, Split], shape: tuple[int, int, int], out_dir: Path, cfg: DataConfig) -> None:
    """Refuse before decoding anything when the prepared splits cannot fit the disk."""
    count = sum(len(y) for _, y in splits.values())
    needed = count * int(np.prod(shape))
    free = shutil.disk_usage(out_dir.parent).free
    if needed > free - DISK_MARGIN:
        raise DataError(
            f"prepare needs {needed / 1e9:.2f} GB for {count:,} images of {shape[0]}x{shape[1]}x{shape[2]} under "
            f"{out_dir.parent}, which has {free / 1e9:.2f} GB free: free space, or set a smaller data.image_size "
            f"(now {cfg.image_size}) or data.max_train_samples"
        )


def normalisation(cfg: DataConfig, channels: int) -> tuple[list[float], list[float]] | None:
    """``data.normalize``'s fixed statistics (None: the training split's own, computed as it is written)."""
    if cfg.normalize == "dataset":
        return None
    if channels != 3:
        raise ConfigError(f"data.normalize: imagenet needs RGB images; {cfg.dataset} gives {channels} channel(s) "
                          "(set data.channels: 3, or data.normalize: dataset)")
    return IMAGENET_MEAN, IMAGENET_STD


def resize_mode(images: Images, cfg: DataConfig) -> str | None:
    """How ``images`` reach ``data.image_size``: the source's choice for files on disk; the array
    sets are square, so every mode squashes them alike."""
    if isinstance(images, ImageFiles):
        return images.resize
    return "squash" if cfg.image_size is not None else None


def prepare(cfg: DataConfig, seed: int, out_dir: str | Path, metrics_file: str | Path) -> PreparedMeta:
    start = time.perf_counter()
    class_names, splits, report = make_splits(cfg, seed)
    shape = written_shape(splits["train"][0], cfg.image_size, cfg.channels)
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    check_disk_space(splits, shape, out_dir, cfg)
    fixed_stats = normalisation(cfg, shape[0])
    # Build the whole folder aside and swap it in, so a failure never leaves a partial data set.
    for stale in out_dir.parent.glob(f".{out_dir.name}.*.tmp"):  # left by a killed run
        shutil.rmtree(stale, ignore_errors=True)
    # beside out_dir (one file system, so the swap is a rename); *.tmp: ignored by git
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.", suffix=".tmp", dir=out_dir.parent))
    labels: dict[str, np.ndarray] = {}
    unreadable: list[tuple[str, str]] = []
    try:
        files, histograms = {}, None
        for name in SPLITS:
            x, y = splits[name]
            written = write_split(tmp / f"{name}_x.npy", x, cfg.image_size, cfg.channels, cfg.workers, desc=name)
            unreadable += written.unreadable
            labels[name] = y[written.kept].astype(np.int64)
            np.save(tmp / f"{name}_y.npy", labels[name])
            files[f"{name}_x.npy"] = written.sha256
            files[f"{name}_y.npy"] = sha256_file(tmp / f"{name}_y.npy")
            if name == "train":
                histograms = written.histograms
        if unreadable and not cfg.skip_corrupt:
            raise unreadable_error(cfg.dataset, unreadable)
        for name, y in labels.items():
            check_classes(cfg.dataset, name, y, class_names)
        mean, std = fixed_stats or channel_stats(histograms)
        meta = PreparedMeta(
            dataset=cfg.dataset,
            class_names=class_names,
            channels=shape[0],
            height=shape[1],
            width=shape[2],
            mean=mean,
            std=std,
            counts={name: len(y) for name, y in labels.items()},
            files=dict(sorted(files.items())),
            resize=resize_mode(splits["train"][0], cfg),
        )
        write_json(tmp / META_FILE, meta.to_dict())
        if out_dir.exists():
            shutil.rmtree(out_dir)
        tmp.rename(out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if unreadable:
        log.warning("%s: skipped %d image(s) that failed to decode, e.g. %s", cfg.dataset, len(unreadable),
                    unreadable[0][0])
        report = {**report, "skipped_corrupt": report.get("skipped_corrupt", 0) + len(unreadable),
                  "skipped_files": (report.get("skipped_files", []) + [p for p, _ in unreadable])[:100]}
    seconds = time.perf_counter() - start
    per_class = {
        name: {class_names[c]: int(n) for c, n in zip(*np.unique(y, return_counts=True))}
        for name, y in labels.items()
    }
    write_json(
        metrics_file,
        {
            "dataset": cfg.dataset,
            "num_classes": len(class_names),
            "image_shape": [meta.channels, meta.height, meta.width],
            "counts": meta.counts,
            **({"resize": meta.resize} if meta.resize else {}),
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
