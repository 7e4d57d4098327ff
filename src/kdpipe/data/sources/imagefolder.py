"""``imagefolder``: ``data.root/{train,test[,val]}/<class>/<image>``, any size and mode.

Class folders are found with torchvision's ``find_classes``/``make_dataset``; every file Pillow
can decode is an image (by extension), and the other files in class folders are counted and named
in the report (``skipped_not_image``), never dropped without a word. Images are decoded once, in parallel, to L or RGB: the channel
count follows the data (all gray -> 1, else 3) unless ``data.channels`` says otherwise. Sizes must
agree unless ``data.image_size`` resizes them.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from torchvision.datasets.folder import find_classes, make_dataset

from kdpipe.data.sources.base import SourceData, register_source
from kdpipe.data.sources.decode import IMAGE_EXTENSIONS, Decoded, decode_files, is_image_file
from kdpipe.errors import DataError

log = logging.getLogger("kdpipe")
SPLIT_DIRS = ("train", "val", "test")
SHOWN = 5


def _list_split(root: Path, split: str) -> tuple[list[str], list[tuple[str, int]], list[str]]:
    """Class names, (image, label) samples and the class folders' other files."""
    folder = root / split
    try:
        classes, class_to_idx = find_classes(str(folder))
    except FileNotFoundError as exc:
        raise DataError(f"imagefolder: {folder} has no class sub-folders ({exc})") from None
    try:
        samples = make_dataset(str(folder), class_to_idx, extensions=IMAGE_EXTENSIONS)
    except FileNotFoundError as exc:  # raised for class folders without a single image
        raise DataError(f"imagefolder: {folder}: {exc}") from None
    others = sorted(str(p) for c in classes for p in (folder / c).rglob("*") if p.is_file() and not is_image_file(p.name))
    return classes, samples, others


def _check_layout(root: Path) -> list[str]:
    if not root.is_dir():
        raise DataError(f"imagefolder: data.root {root} is not a folder")
    present = [s for s in SPLIT_DIRS if (root / s).is_dir()]
    if "train" not in present or "test" not in present:
        subdirs = sorted(p.name for p in root.iterdir() if p.is_dir())
        raise DataError(
            f"imagefolder: {root} must hold train/ and test/ (and optionally val/), each with one sub-folder "
            f"per class; found folders: {', '.join(subdirs) or 'none'}"
        )
    return present


def _check_classes(found: dict[str, list[str]]) -> list[str]:
    reference = found["train"]
    for split, classes in found.items():
        if classes != reference:
            only_train = sorted(set(reference) - set(classes))
            only_here = sorted(set(classes) - set(reference))
            raise DataError(
                f"imagefolder: class folders differ between train/ and {split}/: "
                f"only in train: {only_train or 'none'}; only in {split}: {only_here or 'none'}"
            )
    return reference


def _stack(decoded: list[Decoded], labels: list[int], channels: int) -> tuple[np.ndarray, np.ndarray]:
    arrays = [d.array if d.array.shape[0] == channels else np.repeat(d.array, channels, axis=0) for d in decoded]
    return np.stack(arrays), np.asarray(labels, dtype=np.int64)


@register_source("imagefolder")
def load_imagefolder(cfg) -> SourceData:
    root = Path(cfg.root)
    splits = _check_layout(root)
    listed = {s: _list_split(root, s) for s in splits}
    class_names = _check_classes({s: classes for s, (classes, _, _) in listed.items()})
    not_images = [p for s in splits for p in listed[s][2]]
    if not_images:
        log.warning("imagefolder: skipped %d file(s) in class folders that are not images Pillow reads, e.g. %s",
                    len(not_images), ", ".join(not_images[:SHOWN]))

    decoded: dict[str, list[Decoded]] = {}
    labels: dict[str, list[int]] = {}
    bad: list[Decoded] = []
    for split in splits:
        samples = listed[split][1]
        results = decode_files([p for p, _ in samples], cfg.channels, cfg.image_size, cfg.workers, desc=split)
        decoded[split], labels[split] = [], []
        for res, (_, label) in zip(results, samples):
            if res.array is None:
                bad.append(res)
            else:
                decoded[split].append(res)
                labels[split].append(label)
    if bad and not cfg.skip_corrupt:
        shown = "; ".join(f"{d.path} ({d.error})" for d in bad[:SHOWN])
        more = f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
        raise DataError(
            f"imagefolder: {len(bad)} unreadable image(s): {shown}{more}. "
            "Fix or remove them, or set data.skip_corrupt: true to skip them"
        )
    for split in splits:
        if not decoded[split]:
            raise DataError(f"imagefolder: {root / split} has no readable images")

    everything = [d for split in splits for d in decoded[split]]
    sizes = {d.array.shape[1:] for d in everything}
    if len(sizes) > 1:
        first = everything[0]
        other = next(d for d in everything if d.array.shape[1:] != first.array.shape[1:])
        raise DataError(
            f"imagefolder: image sizes differ ({first.path} is {first.array.shape[2]}x{first.array.shape[1]}, "
            f"{other.path} is {other.array.shape[2]}x{other.array.shape[1]}); set data.image_size to resize them"
        )
    channels = cfg.channels or (1 if all(d.gray for d in everything) else 3)
    arrays = {split: _stack(decoded[split], labels[split], channels) for split in splits}
    if bad:
        log.warning("imagefolder: skipped %d unreadable image(s), e.g. %s", len(bad), bad[0].path)
    return SourceData(
        class_names=class_names,
        train=arrays["train"],
        test=arrays["test"],
        val=arrays.get("val"),
        report={
            "decoded_images": len(everything) + len(bad),
            "skipped_corrupt": len(bad),
            "skipped_files": [d.path for d in bad[:100]],
            "skipped_not_image": len(not_images),
            "skipped_not_image_files": not_images[:100],
        },
    )
