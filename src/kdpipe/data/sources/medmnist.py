"""``medmnist``: the 2D single-label MedMNIST sets through the ``medmnist`` package.

``data.medmnist_flag`` picks the set (pathmnist, dermamnist, bloodmnist, octmnist, ...),
``data.medmnist_size`` its resolution (28, 64, 128, 224). Multi-label sets (chestmnist) are refused:
the pipeline's losses and metrics are single-label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from kdpipe.data.sources.base import SourceData, register_source
from kdpipe.errors import DataError

SINGLE_LABEL_TASKS = {"multi-class", "binary-class", "ordinal-regression"}


def single_label_2d_flags() -> list[str]:
    from medmnist import INFO

    return sorted(f for f, i in INFO.items() if not f.endswith("3d") and i["task"] in SINGLE_LABEL_TASKS)


def _split(ds) -> tuple[np.ndarray, np.ndarray]:
    imgs = np.asarray(ds.imgs)
    images = imgs[:, None] if imgs.ndim == 3 else imgs.transpose(0, 3, 1, 2)
    return np.ascontiguousarray(images, dtype=np.uint8), np.asarray(ds.labels, dtype=np.int64).reshape(-1)


@register_source("medmnist")
def load_medmnist(cfg) -> SourceData:
    try:
        import medmnist
        from medmnist import INFO
    except ImportError:  # pragma: no cover - it is in requirements.txt
        raise DataError("data.dataset=medmnist needs the medmnist package: pip install -r requirements.txt") from None
    flag, size = cfg.medmnist_flag, cfg.medmnist_size
    if flag not in INFO or flag.endswith("3d"):
        raise DataError(f"data.medmnist_flag: unknown 2D MedMNIST set '{flag}'; valid: {', '.join(single_label_2d_flags())}")
    info = INFO[flag]
    if info["task"] not in SINGLE_LABEL_TASKS:
        raise DataError(
            f"data.medmnist_flag: {flag} is a {info['task']} task; kdpipe trains single-label classifiers "
            f"(choose one of {', '.join(single_label_2d_flags())})"
        )
    cls = getattr(medmnist, info["python_class"])
    root = Path(cfg.root)
    file = root / f"{flag}{'' if size == 28 else f'_{size}'}.npz"
    if not file.is_file():
        if not cfg.download:
            raise DataError(f"medmnist: {file} not found (data.download is false); download it from {info['url' if size == 28 else f'url_{size}']}")
        try:
            root.mkdir(parents=True, exist_ok=True)
            cls(split="train", root=str(root), download=True, size=size)
        except Exception as exc:  # noqa: BLE001 - offline or refused: one message
            url = info["url" if size == 28 else f"url_{size}"]
            raise DataError(f"medmnist: {file} not found and the download failed ({exc}); put {url} at {file}") from None
    try:
        splits = {s: _split(cls(split=s, root=str(root), download=False, size=size)) for s in ("train", "val", "test")}
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"medmnist: {file} is unreadable ({exc})") from None
    names = [info["label"][str(i)] for i in range(len(info["label"]))]
    return SourceData(class_names=names, train=splits["train"], val=splits["val"], test=splits["test"])
