"""``imagefolder``: ``data.root/{train,test[,val]}/<class>/<image>``, any size and mode.

Class folders are found with torchvision's ``find_classes``/``make_dataset``; every file Pillow
can decode is an image (by extension), and the other files in class folders are counted and named
in the report (``skipped_not_image``), never dropped without a word. The source reads headers only
(in parallel): the channel count follows the data (all gray -> 1, else 3) unless ``data.channels``
says otherwise; sizes must agree unless ``data.image_size`` resizes them. Prepare decodes the pixels
later, a chunk at a time, straight into the prepared split (kdpipe.data.write).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from torchvision.datasets.folder import find_classes, make_dataset

from kdpipe.data.sources.base import ImageFiles, SourceData, register_source
from kdpipe.data.sources.decode import IMAGE_EXTENSIONS, Probe, is_image_file, probe_files, unreadable_error
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

    # Headers first (sizes, gray or colour): the split's shape is known before a pixel is decoded.
    probes: dict[str, list[Probe]] = {}
    labels: dict[str, list[int]] = {}
    bad: list[Probe] = []
    for split in splits:
        samples = listed[split][1]
        probes[split], labels[split] = [], []
        for probe, (_, label) in zip(probe_files([p for p, _ in samples], cfg.workers, desc=f"{split} headers"), samples):
            if probe.error is not None:
                bad.append(probe)
            else:
                probes[split].append(probe)
                labels[split].append(label)
    if bad and not cfg.skip_corrupt:
        raise unreadable_error("imagefolder", [(b.path, b.error) for b in bad])
    for split in splits:
        if not probes[split]:
            raise DataError(f"imagefolder: {root / split} has no readable images")

    everything = [p for split in splits for p in probes[split]]
    first = everything[0]
    other = next((p for p in everything if (p.height, p.width) != (first.height, first.width)), None)
    if other is not None and cfg.image_size is None:
        raise DataError(
            f"imagefolder: image sizes differ ({first.path} is {first.width}x{first.height}, "
            f"{other.path} is {other.width}x{other.height}); set data.image_size to resize them"
        )
    channels = cfg.channels or (1 if all(p.gray for p in everything) else 3)
    size = (cfg.image_size, cfg.image_size) if cfg.image_size else (first.height, first.width)
    # photos keep their proportions by default: the shorter side is scaled, the centre cut out
    resize = (cfg.resize or "center_crop") if cfg.image_size is not None else None

    def files(split: str) -> tuple[ImageFiles, np.ndarray]:
        paths = tuple(p.path for p in probes[split])
        return ImageFiles(paths, channels, *size, resize=resize), np.asarray(labels[split], dtype=np.int64)

    if bad:
        log.warning("imagefolder: skipped %d unreadable image(s), e.g. %s", len(bad), bad[0].path)
    return SourceData(
        class_names=class_names,
        train=files("train"),
        test=files("test"),
        val=files("val") if "val" in splits else None,
        report={
            "decoded_images": len(everything) + len(bad),
            "skipped_corrupt": len(bad),
            "skipped_files": [b.path for b in bad[:100]],
            "skipped_not_image": len(not_images),
            "skipped_not_image_files": not_images[:100],
        },
    )
