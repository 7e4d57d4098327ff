"""A teacher that is a whole-model file: ``<role>.arch: onnx`` (run by ONNX Runtime) or
``torchscript``, with ``<role>.checkpoint`` naming the file and ``<role>.epochs: 0``.

The file is the network, so it is imported as it is (never trained) and gives logits only: the
feature methods cannot tap it. Its bytes are kept as a uint8 buffer of the module, so the
stage's kdpipe checkpoint (``models/teacher.pt``) holds the file itself and the later stages load
it like any other checkpoint, with ``torch.load(weights_only=True)``. Neither format is unpickled:
ONNX is a protobuf, and a TorchScript archive runs in TorchScript's interpreter.

Inputs are the prepared images normalised with the data's mean and std (metrics/prepare.json),
as for a file kdpipe exports; a file that records other statistics (kdpipe's ONNX metadata) is
refused rather than fed the wrong inputs.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from kdpipe.data.prepared import PreparedMeta
from kdpipe.errors import ConfigError, DataError, MissingInputError
from kdpipe.models import MODELS, MODEL_FILE_ARCHS
from kdpipe.models.registry import Spec

BUFFER = "model_file"


class FileModel(nn.Module):
    """Runs an ONNX or TorchScript file on CPU tensors; no parameters, no gradient."""

    def __init__(self, kind: str):
        super().__init__()
        if kind not in MODEL_FILE_ARCHS:
            raise ValueError(kind)
        self.kind = kind
        self.register_buffer(BUFFER, torch.empty(0, dtype=torch.uint8))
        self._runner = None

    def set_file(self, data: bytes) -> None:
        setattr(self, BUFFER, torch.frombuffer(bytearray(data), dtype=torch.uint8))
        # not a submodule: a TorchScript module's own weights would enter this module's state dict
        object.__setattr__(self, "_runner", _open(self.kind, data))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        key = prefix + BUFFER
        if key not in state_dict:
            missing_keys.append(key)
            return
        self.set_file(state_dict[key].numpy().tobytes())

    @torch.compiler.disable  # an ONNX Runtime call is no graph torch.compile can trace
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._runner is None:
            raise RuntimeError("no model file loaded")
        device = x.device  # the logits go back where the batch came from (a GPU student's device)
        x = x.detach().to("cpu", torch.float32).contiguous()
        if self.kind == "torchscript":
            with torch.no_grad():
                return self._runner(x).float().to(device)
        session = self._runner
        (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32)).to(device)


def _open(kind: str, data: bytes):
    if kind == "torchscript":
        return torch.jit.load(io.BytesIO(data), map_location="cpu").eval()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])


def sniff(path: Path) -> str:
    """"onnx", "torchscript", "torch.save" or "unknown", from the file's bytes."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
        return "torchscript" if any(n.split("/", 1)[-1].startswith("code/") for n in names) else "torch.save"
    try:
        import onnx

        onnx.load_model(str(path), load_external_data=False)
        return "onnx"
    except Exception:  # noqa: BLE001 - not a protobuf ONNX model
        return "unknown"


def read_model_file(model: FileModel, path: str | Path, meta: PreparedMeta, where: str) -> None:
    """Load ``path`` into ``model`` and check it against the data: input size, class count, and
    (kdpipe's ONNX metadata, when present) class names and normalisation."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{where}: {path} not found")
    kind = sniff(path)
    if kind != model.kind:
        raise ConfigError(f"{where}: {path} is {_described(kind)}, not {_described(model.kind)} as the role's arch "
                          f"'{model.kind}' says")
    try:
        model.set_file(path.read_bytes())
    except Exception as exc:  # noqa: BLE001 - whatever the runtime rejects, the answer is the same
        raise ConfigError(f"{where}: {path} does not load as {_described(kind)} ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]})") from None
    if kind == "onnx":
        _check_onnx_metadata(path, meta, where)
    probe = torch.zeros(2, *meta.image_shape)
    try:
        logits = model(probe)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"{where}: {path} does not run on a batch of {tuple(meta.image_shape)} images "
                        f"({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None
    if tuple(logits.shape) != (2, meta.num_classes):
        raise DataError(f"{where}: {path} gives outputs of shape {tuple(logits.shape)[1:]} per image; the data has "
                        f"{meta.num_classes} classes")


def _check_onnx_metadata(path: Path, meta: PreparedMeta, where: str) -> None:
    import onnx

    props = {p.key: p.value for p in onnx.load_model(str(path), load_external_data=False).metadata_props}
    if "kdpipe.class_names" in props and json.loads(props["kdpipe.class_names"]) != list(meta.class_names):
        raise DataError(f"{where}: {path} was made for the classes {json.loads(props['kdpipe.class_names'])[:5]}..., "
                        f"the data has {list(meta.class_names)[:5]}...")
    for key, ours in (("kdpipe.mean", meta.mean), ("kdpipe.std", meta.std)):
        if key in props and not np.allclose(json.loads(props[key]), ours, atol=1e-4):
            raise DataError(f"{where}: {path} expects inputs normalised with {key.split('.')[1]} "
                            f"{json.loads(props[key])}, the prepared data uses {list(ours)}")


def _described(kind: str) -> str:
    return {"onnx": "an ONNX model", "torchscript": "a TorchScript archive",
            "torch.save": "a torch.save file (a state dict or checkpoint: set arch to its architecture)",
            "unknown": "neither ONNX nor TorchScript"}[kind]


for _kind in MODEL_FILE_ARCHS:
    MODELS.add(_kind, Spec(build=lambda kind=_kind, **_: FileModel(kind)))
