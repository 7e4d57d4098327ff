"""Checkpoints: a trained model with what is needed to rebuild and use it."""

from __future__ import annotations

import io
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kdpipe.errors import MissingInputError
from kdpipe.io import write_with
from kdpipe.models.registry import build_model

FORMAT = "kdpipe-checkpoint/1"


@dataclass
class ModelInfo:
    role: str
    arch: str
    num_classes: int
    image_shape: tuple[int, int, int]
    class_names: list[str]
    mean: list[float]
    std: list[float]
    pretrained: bool = False  # ImageNet variant of the architecture (its stem differs)
    summary: dict[str, Any] = field(default_factory=dict)
    resize: str | None = None  # how its training images reached image_shape (data.resize); None: not resized

    def to_dict(self) -> dict:
        # a model of data that was not resized is written as before resize existed: same bytes
        return {k: v for k, v in asdict(self).items() if not (k == "resize" and v is None)}

    def build(self) -> nn.Module:
        c, h, w = self.image_shape
        return build_model(self.arch, self.num_classes, c, max(h, w), self.pretrained, load_weights=False)


def save_checkpoint(path: str | Path, model: nn.Module, info: ModelInfo) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    payload = {"format": FORMAT, "info": info.to_dict(), "state_dict": state}
    # Saved through a buffer: torch.save names the zip's root folder after the file it writes,
    # and the temporary name is random, so writing to the path would change the bytes each time.
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    write_with(path, lambda tmp: tmp.write_bytes(buffer.getvalue()))


def load_checkpoint(path: str | Path, stage_hint: str | None = None) -> tuple[nn.Module, ModelInfo]:
    """Rebuild the model in eval mode on the CPU; a clear error if the file is missing or bad."""
    path = Path(path)
    hint = f": run `dvc repro {stage_hint}` first" if stage_hint else ""
    if not path.is_file():
        raise MissingInputError(f"{path} not found{hint}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != FORMAT:
            raise ValueError(f"format {payload.get('format')!r}, expected {FORMAT!r}")
        raw = dict(payload["info"])
        raw["image_shape"] = tuple(raw["image_shape"])
        info = ModelInfo(**raw)
        model = info.build()
        model.load_state_dict(payload["state_dict"])
    except Exception as exc:  # noqa: BLE001 - any failure to read is the same problem for the user
        raise MissingInputError(f"{path} is not a readable kdpipe checkpoint ({exc}){hint}") from None
    return model.eval(), info
