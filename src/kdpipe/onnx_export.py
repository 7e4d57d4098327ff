"""fp32 ONNX export with a dynamic batch axis, checked by onnx.checker and by logit parity."""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Protocol

import numpy as np
import onnx
import torch
from torch import nn

from kdpipe.errors import KdpipeError
from kdpipe.io import atomic_path
from kdpipe.models.checkpoint import ModelInfo

log = logging.getLogger("kdpipe")
INPUT_NAME, OUTPUT_NAME = "input", "logits"


class Sliceable(Protocol):
    """Float images read a batch at a time: an array, a tensor, or kdpipe.quantize.NormalisedSplit."""

    def __len__(self) -> int: ...

    def __getitem__(self, index: slice) -> np.ndarray: ...


def metadata_props(info: ModelInfo) -> dict[str, str]:
    """Everything needed to preprocess inputs and name outputs, carried inside the file."""
    return {
        "kdpipe.arch": info.arch,
        "kdpipe.class_names": json.dumps(info.class_names),
        "kdpipe.image_shape": json.dumps(list(info.image_shape)),
        "kdpipe.mean": json.dumps(info.mean),
        "kdpipe.std": json.dumps(info.std),
        **({"kdpipe.resize": info.resize} if info.resize else {}),
    }


def strip_stack_traces(proto: onnx.ModelProto) -> None:
    """Drop the exporter's per-node Python stack traces: they hold local file paths, so the same
    model exported from two checkouts would differ byte for byte."""
    for node in proto.graph.node:
        kept = [p for p in node.metadata_props if p.key != "pkg.torch.onnx.stack_trace"]
        if len(kept) != len(node.metadata_props):
            del node.metadata_props[:]
            node.metadata_props.extend(kept)


def export_onnx(model: nn.Module, info: ModelInfo, path: str | Path, opset: int) -> None:
    """Export with torch.onnx's maintained (torch.export-based) exporter, batch axis dynamic."""
    model = model.eval().to("cpu", memory_format=torch.contiguous_format)
    example = torch.zeros(2, *info.image_shape)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with atomic_path(path) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            model, (example,), dynamo=True, input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_shapes=({0: batch},), opset_version=opset, verbose=False,
        )
        proto = program.model_proto
        strip_stack_traces(proto)
        for key, value in metadata_props(info).items():
            proto.metadata_props.add(key=key, value=value)
        onnx.save_model(proto, str(tmp), save_as_external_data=False)
        onnx.checker.check_model(str(tmp), full_check=True)


def ort_session(path: str | Path, threads: int | None = None):
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def onnx_logits(session, x: Sliceable, batch_size: int = 256) -> np.ndarray:
    name = session.get_inputs()[0].name
    outs = [session.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(outs) if outs else np.empty((0,))


def check_parity(model: nn.Module, onnx_path: str | Path, inputs: Sliceable, atol: float, batch_size: int = 256) -> float:
    """Max |logit difference| ONNX Runtime vs PyTorch over ``inputs`` (float images: a tensor, an
    array or anything that slices into batches of them), a batch at a time, and for the first image
    alone (batch 1); error above atol."""
    session = ort_session(onnx_path)
    model = model.eval()
    diff = 0.0
    for start in range(0, len(inputs), batch_size):
        batch = inputs[start : start + batch_size]
        x = np.ascontiguousarray((batch.float().numpy() if isinstance(batch, torch.Tensor) else batch), np.float32)
        with torch.no_grad():
            ref = model(torch.from_numpy(x)).numpy()
        diff = max(diff, float(np.abs(onnx_logits(session, x, batch_size) - ref).max()))
        if start == 0:
            diff = max(diff, float(np.abs(onnx_logits(session, x[:1], batch_size=1) - ref[:1]).max()))
    if not diff <= atol:
        raise KdpipeError(f"{onnx_path}: ONNX logits differ from PyTorch by {diff:.3g} (> quantize.atol={atol})")
    return diff
