"""``cifar10``, ``cifar100``, ``mnist``, ``fashion_mnist`` through torchvision's data set classes.

Read from ``data.root`` when the files are there; otherwise downloaded (``data.download``) when
the network allows; otherwise a clear error naming the archive and where to put it.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
from torchvision import datasets as tvd

from kdpipe.data.sources.base import SourceData, register_source
from kdpipe.errors import DataError


def _presence_checked(cls: type[tvd.CIFAR10]) -> type[tvd.CIFAR10]:
    """The CIFAR class with its per-file md5 checks off (torchvision then checks presence only).

    torchvision compares each unpacked batch with a fixed md5; a user's own unpacked copy is
    accepted when its files are there (prepare then checks the arrays' shapes). A downloaded
    archive is still verified against its md5 before it is unpacked.
    """
    return type(
        cls.__name__,
        (cls,),
        {
            "train_list": [[name, None] for name, _ in cls.train_list],
            "test_list": [[name, None] for name, _ in cls.test_list],
            "meta": {**cls.meta, "md5": None},
        },
    )


_CIFAR10 = _presence_checked(tvd.CIFAR10)
_CIFAR100 = _presence_checked(tvd.CIFAR100)


def _cifar_hint(cls: type[tvd.CIFAR10], root: Path) -> str:
    return (
        f"put {cls.filename} ({cls.url}) in {root}/ or unpack it there as {root}/{cls.base_folder}/"
    )


def _mnist_hint(cls: type[tvd.MNIST], root: Path) -> str:
    files = ", ".join(name for name, _ in cls.resources)
    return f"put {files} (from {cls.mirrors[0]}) in {root / cls.__name__ / 'raw'}/"


def _open(cls, name: str, root: Path, train: bool, download: bool, hint: str):
    try:
        return cls(root=str(root), train=train, download=False)
    except RuntimeError:
        if not download:
            raise DataError(f"{name}: files not found under {root} (data.download is false); {hint}") from None
    except (OSError, pickle.UnpicklingError, EOFError, ValueError) as exc:
        raise DataError(f"{name}: files under {root} are unreadable ({exc}); {hint}") from None
    try:
        root.mkdir(parents=True, exist_ok=True)
        return cls(root=str(root), train=train, download=True)
    except Exception as exc:  # noqa: BLE001 - offline, refused, corrupt archive: one message
        raise DataError(f"{name}: not found under {root} and the download failed ({exc}); {hint}") from None


def _arrays(ds) -> tuple[np.ndarray, np.ndarray]:
    data = np.asarray(ds.data)
    images = data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)  # -> (N, C, H, W)
    return np.ascontiguousarray(images, dtype=np.uint8), np.asarray(ds.targets, dtype=np.int64)


def _loader(name: str, cls, hint_fn):
    def load(cfg) -> SourceData:
        root = Path(cfg.root)
        hint = hint_fn(cls, root)
        train = _open(cls, name, root, True, cfg.download, hint)
        test = _open(cls, name, root, False, cfg.download, hint)
        return SourceData(class_names=list(train.classes), train=_arrays(train), test=_arrays(test))

    return register_source(name)(load)


_loader("cifar10", _CIFAR10, _cifar_hint)
_loader("cifar100", _CIFAR100, _cifar_hint)
_loader("mnist", tvd.MNIST, _mnist_hint)
_loader("fashion_mnist", tvd.FashionMNIST, _mnist_hint)
