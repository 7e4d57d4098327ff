"""One interface over the model files the pipeline writes: kdpipe checkpoints (``.pt``, run by
PyTorch eager) and ONNX files (fp32 or int8, run by ONNX Runtime on the CPU). Evaluation, the
deployment benchmark and ``predict`` all go through it, so they measure the same thing."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import torch

from kdpipe.data.batches import BatchTransform
from kdpipe.errors import MissingInputError
from kdpipe.models.checkpoint import load_checkpoint
from kdpipe.models.registry import count_parameters
from kdpipe.onnx_export import ort_session

Predictor = Callable[[np.ndarray], np.ndarray]  # normalised float32 (N, C, H, W) -> logits


@dataclass
class ModelFile:
    path: Path
    runtime: str  # "pytorch" | "onnxruntime"
    arch: str
    class_names: list[str]
    image_shape: tuple[int, int, int]
    mean: list[float]
    std: list[float]
    params: int
    model: torch.nn.Module | None = None  # PyTorch only
    # how a file of another size reaches image_shape: as the training images did (data.resize);
    # squash for a model whose training images were never resized
    resize: str = "squash"

    @property
    def size_mb(self) -> float:
        return round(self.path.stat().st_size / 1e6, 4)

    @contextlib.contextmanager
    def predictor(self, threads: int | None = None) -> Iterator[Predictor]:
        """A callable running the model with ``threads`` CPU threads (None: the library default)."""
        if self.model is not None:
            previous = torch.get_num_threads()
            if threads:
                torch.set_num_threads(threads)
            model = self.model

            def run(x: np.ndarray) -> np.ndarray:
                with torch.inference_mode():
                    return model(torch.from_numpy(x)).float().numpy()

            try:
                yield run
            finally:
                torch.set_num_threads(previous)
        else:
            session = ort_session(self.path, threads=threads)
            name = session.get_inputs()[0].name
            yield lambda x: session.run(None, {name: x})[0]

    def logits(self, images: np.ndarray, batch_size: int = 256, mirrored: bool = False) -> np.ndarray:
        """Logits of uint8 (N, C, H, W) ``images`` (a memory-mapped split is read a batch at a time),
        normalised with the model's own mean and std; ``mirrored``: of their mirror images."""
        with self.predictor() as run:
            parts = []
            for i in range(0, len(images), batch_size):
                batch = images[i : i + batch_size]
                parts.append(run(normalise(batch[..., ::-1] if mirrored else batch, self.mean, self.std)))
        return np.concatenate(parts) if parts else np.empty((0, len(self.class_names)), np.float32)


def onnx_params(proto: onnx.ModelProto) -> int:
    """Weights stored in the graph, quantized or not: every initializer that is a weight matrix or
    kernel (2-D or more) or a bias, but not scales and zero points (scalars or per-channel 1-D)."""
    consumers: dict[str, set[str]] = {}
    for node in proto.graph.node:
        for name in node.input:
            consumers.setdefault(name, set()).add(node.op_type)
    total = 0
    for init in proto.graph.initializer:
        uses = consumers.get(init.name, set())
        is_bias = len(init.dims) == 1 and (uses & {"Conv", "Gemm", "Add"} or "bias" in init.name)
        quant_bias = len(init.dims) == 1 and init.data_type == onnx.TensorProto.INT32
        if len(init.dims) > 1 or is_bias or quant_bias:
            total += int(np.prod(init.dims))
    return total


def open_model(path: str | Path, stage_hint: str | None = None) -> ModelFile:
    """Load a ``.pt`` kdpipe checkpoint or a kdpipe ``.onnx`` file, with its preprocessing."""
    path = Path(path)
    if not path.is_file():
        raise MissingInputError(f"{path} not found" + (f": run `dvc repro {stage_hint}` first" if stage_hint else ""))
    if path.suffix == ".onnx":
        try:
            proto = onnx.load(str(path))
        except Exception as exc:  # noqa: BLE001 - any parse failure means the same to the user
            raise MissingInputError(f"{path} is not a readable ONNX file ({exc})") from None
        meta = {p.key: p.value for p in proto.metadata_props}
        if "kdpipe.class_names" not in meta:
            raise MissingInputError(f"{path} carries no kdpipe metadata (class names, mean, std): export it with kdpipe")
        return ModelFile(
            path=path, runtime="onnxruntime", arch=meta.get("kdpipe.arch", "?"),
            class_names=json.loads(meta["kdpipe.class_names"]),
            image_shape=tuple(json.loads(meta["kdpipe.image_shape"])),
            mean=json.loads(meta["kdpipe.mean"]), std=json.loads(meta["kdpipe.std"]), params=onnx_params(proto),
            resize=meta.get("kdpipe.resize", "squash"),
        )
    model, info = load_checkpoint(path, stage_hint)
    return ModelFile(
        path=path, runtime="pytorch", arch=info.arch, class_names=info.class_names,
        image_shape=tuple(info.image_shape), mean=info.mean, std=info.std, params=count_parameters(model),
        model=model, resize=info.resize or "squash",
    )


def normalise(images: np.ndarray, mean: list[float], std: list[float]) -> np.ndarray:
    """uint8 (N, C, H, W) -> float32 normalised by training's own BatchTransform (no augmentation)."""
    transform = BatchTransform(SimpleNamespace(mean=mean, std=std), torch.device("cpu"), channels_last=False)
    return transform(torch.from_numpy(np.ascontiguousarray(images))).numpy()

