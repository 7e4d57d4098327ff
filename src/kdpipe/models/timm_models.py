"""timm models for any role: ``<role>.arch: timm:<name>`` (any of ``timm.list_models()``).

timm builds the network (``timm.create_model``, its own classifier for the data's classes and
its own first-layer adaptation to the data's channels); the default feature layers are the last
four stages of timm's ``feature_info``. Small inputs from scratch (``data.image_size`` <= 64, not
pretrained): the stem's stride-2 convolution runs at stride 1 and a ResNet-style max-pool is
dropped, as the torchvision adaptations in ``registry.py`` do; patchify stems (kernel = stride,
ConvNeXt) keep theirs.

Pretrained (``<role>.pretrained: true``): a weights file at ``models/imported/timm/<name>.<ext>``
(safetensors, pth or bin; a dependency of the training stages) is read first; otherwise timm reads
its Hugging Face hub cache ($HF_HOME/hub) or downloads. Offline with neither, the error names both.
"""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
from torch import nn

from kdpipe.errors import ConfigError
from kdpipe.models import MODELS, TIMM_PREFIX
from kdpipe.models.registry import SMALL_INPUT_MAX, Spec

LOCAL_WEIGHTS = Path("models/imported/timm")
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".bin")


def model_name(arch: str) -> str:
    return arch.removeprefix(TIMM_PREFIX)


def check_name(arch: str) -> str:
    """``arch`` if timm knows its model (with or without a pretrained tag); ValueError naming the
    closest timm names otherwise."""
    name = model_name(arch)
    if timm.is_model(name):
        return arch
    close = difflib.get_close_matches(name, timm.list_models(), n=3)
    hint = f" (did you mean {', '.join(TIMM_PREFIX + c for c in close)}?)" if close else ""
    raise ValueError(f"unknown timm model '{name}'{hint}; `python -c \"import timm; print(timm.list_models('*net*'))\"` "
                     "lists them")


def local_weights(name: str) -> Path | None:
    found = [LOCAL_WEIGHTS / f"{name}{suffix}" for suffix in WEIGHT_SUFFIXES]
    return next((p for p in found if p.is_file()), None)


def _create_pretrained(name: str, num_classes: int, in_channels: int) -> nn.Module:
    file = local_weights(name)
    overlay = {"file": str(file)} if file else None
    try:
        return timm.create_model(name, pretrained=True, num_classes=num_classes, in_chans=in_channels,
                                 pretrained_cfg_overlay=overlay)
    except Exception as exc:  # noqa: BLE001 - offline, refused, corrupt or mismatched: one message
        if file is not None:
            raise ConfigError(f"timm:{name}: the pretrained weights {file} do not load into {name} ({exc})") from None
        cfg = timm.models.get_pretrained_cfg(name) if timm.is_model(name) else None
        hub = getattr(cfg, "hf_hub_id", None) or name
        raise ConfigError(
            f"timm:{name}: pretrained weights need the Hugging Face hub files of '{hub}' in the hub cache "
            f"($HF_HOME/hub), or a weights file at {LOCAL_WEIGHTS / (name + '.safetensors')} (or .pth/.bin); "
            f"neither is there and the download failed ({type(exc).__name__}: {exc}; HF_HUB_OFFLINE=1 skips the retries)"
        ) from None


def _adapt_small_input(model: nn.Module) -> None:
    stem = model.get_submodule(model.pretrained_cfg["first_conv"])
    if isinstance(stem, nn.Conv2d) and stem.stride != (1, 1) and stem.stride != stem.kernel_size:
        stem.stride = (1, 1)  # padding stays: a 3x3 (or 7x7) stem keeps the input's size
    if isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        model.maxpool = nn.Identity()


def build(name: str, num_classes: int, in_channels: int, image_size: int, pretrained: bool,
          load_weights: bool) -> nn.Module:
    if pretrained and load_weights:
        return _create_pretrained(name, num_classes, in_channels)
    model = timm.create_model(name, pretrained=False, num_classes=num_classes, in_chans=in_channels)
    if not pretrained and image_size <= SMALL_INPUT_MAX:
        _adapt_small_input(model)
    return model


def feature_layers(name: str) -> list[str]:
    """The last four stages of timm's ``feature_info`` (module paths), early to late."""
    model = timm.create_model(name, pretrained=False, num_classes=0)
    info = getattr(model, "feature_info", None) or []
    return [entry["module"] for entry in info][-4:]


def spec(arch: str) -> Spec:
    name = model_name(arch)
    if not timm.is_model(name):
        raise KeyError(arch)
    layers = feature_layers(name)
    return Spec(build=lambda **kwargs: build(name, **kwargs), feature_layers=layers if len(layers) == 4 else None)


MODELS.add_resolver(TIMM_PREFIX, spec)
