"""A role's ``checkpoint``: weights a user brings (a teacher trained elsewhere), checked against the
architecture and the data before anything trains on or distils from them.

A file is untrusted input: it is read with ``torch.load(weights_only=True)``, which restores
tensors and plain containers and never runs pickled code. Accepted: a kdpipe checkpoint (what the
training stages write), or a state dict of the role's architecture (``torch.save(model.state_dict())``,
also inside ``{"state_dict": ...}`` or ``{"model": ...}``, with or without DDP's ``module.`` prefix);
with ``arch: onnx`` or ``torchscript``, the whole-model file itself (``models/file_model.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from kdpipe.data.prepared import PreparedMeta
from kdpipe.errors import ConfigError, DataError, MissingInputError
from kdpipe.models import MODEL_FILE_ARCHS
from kdpipe.models.checkpoint import FORMAT

IMPORT_DIR = Path("models/imported")  # a dependency of the training stages: files here are tracked by DVC
SHOWN = 3


def read_state_dict(path: str | Path, arch: str, meta: PreparedMeta, where: str) -> dict[str, torch.Tensor]:
    """The tensors of ``path`` for ``arch`` on the data ``meta`` describes; a clear error naming
    ``where`` (the params key) when the file is missing, unsafe to read, or made for other data."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(
            f"{where}: {path} not found; put the file under {IMPORT_DIR}/ and track it with DVC "
            f"(`dvc add {path}`, or `dvc import <repository> <path> -o {path}`)"
        )
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever stops a safe load, the user's answer is the same
        reason = str(exc).splitlines()[0][:200]
        raise ConfigError(
            f"{where}: {path} cannot be read as tensors alone ({type(exc).__name__}: {reason}). kdpipe reads a "
            "kdpipe checkpoint or a state dict and never unpickles Python objects from a model file: save the "
            "weights with torch.save(model.state_dict(), path)"
        ) from None
    if isinstance(payload, dict) and payload.get("format") == FORMAT:
        info = payload["info"]
        if info["arch"] != arch:
            raise ConfigError(f"{where}: {path} holds a {info['arch']}, but the role's arch is {arch}")
        if list(info["class_names"]) != list(meta.class_names):
            raise DataError(f"{where}: {path} was trained on the classes {_few(info['class_names'])}, "
                            f"the data has {_few(meta.class_names)}")
        if tuple(info["image_shape"]) != tuple(meta.image_shape):
            raise DataError(f"{where}: {path} takes {tuple(info['image_shape'])} images, the data has {meta.image_shape}")
        return payload["state_dict"]
    state = payload
    if isinstance(payload, dict):
        state = payload.get("state_dict", payload.get("model", payload))
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ConfigError(f"{where}: {path} holds no state dict (a mapping of parameter names to tensors)")
    if all(k.startswith("module.") for k in state):  # saved from a DDP-wrapped model
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def load_weights(model: nn.Module, path: str | Path, arch: str, meta: PreparedMeta, where: str) -> None:
    """Load ``path`` (see ``read_state_dict``) into ``model``, every tensor by name and shape; a
    whole-model file (arch ``onnx``/``torchscript``) is read by ``models/file_model.py``."""
    if arch in MODEL_FILE_ARCHS:
        from kdpipe.models.file_model import read_model_file

        read_model_file(model, path, meta, where)
        return
    state = read_state_dict(path, arch, meta, where)
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [f"{k} {tuple(state[k].shape)} (needs {tuple(v.shape)})" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    if missing or unexpected or wrong:
        problems = [f"{label}: {_few(keys)}" for label, keys in
                    (("missing", missing), ("unexpected", unexpected), ("other shapes", wrong)) if keys]
        raise ConfigError(
            f"{where}: {path} does not fit {arch} for {meta.num_classes} classes at {meta.image_shape}; "
            + "; ".join(problems)
        )
    model.load_state_dict(state)


def _few(items) -> str:
    items = list(items)
    more = f" and {len(items) - SHOWN} more" if len(items) > SHOWN else ""
    return ", ".join(map(str, items[:SHOWN])) + more
