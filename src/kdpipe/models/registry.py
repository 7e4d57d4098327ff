"""Architecture registry: torchvision models adapted to the data's channels and image size.

Small inputs (CIFAR-sized and below) lose the ImageNet stem's 4x down-sampling: ResNets get a
3x3 stride-1 first convolution and no max-pool, MobileNetV2 a stride-1 first convolution.
torchvision's model code is used as it is; only the stem is swapped.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn
from torchvision import models as tvm

SMALL_INPUT_MAX = 64  # images this size or smaller use the small-input stem

MODELS: dict[str, Callable[[int, int, bool], nn.Module]] = {}


def register_model(name: str):
    def wrap(fn: Callable[[int, int, bool], nn.Module]):
        MODELS[name] = fn
        return fn

    return wrap


def _resnet(factory: Callable[..., tvm.ResNet]) -> Callable[[int, int, bool], nn.Module]:
    def build(num_classes: int, in_channels: int, small_input: bool) -> nn.Module:
        # Zero-init of each residual branch's last BN lets deep ResNets train from scratch on
        # tiny data sets (ResNet-50 on digits stalls near 65% without it).
        model = factory(num_classes=num_classes, zero_init_residual=True)
        if small_input:
            model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
            model.maxpool = nn.Identity()
        elif in_channels != 3:
            model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
        nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
        return model

    return build


for _name in ("resnet18", "resnet34", "resnet50"):
    register_model(_name)(_resnet(getattr(tvm, _name)))


@register_model("mobilenet_v2")
def _mobilenet_v2(num_classes: int, in_channels: int, small_input: bool) -> nn.Module:
    model = tvm.mobilenet_v2(num_classes=num_classes)
    stem = model.features[0][0]
    if small_input or in_channels != 3:
        stride = 1 if small_input else 2
        model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, stride, 1, bias=False)
        nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")
    return model


def build_model(arch: str, num_classes: int, in_channels: int, image_size: int) -> nn.Module:
    if arch not in MODELS:
        raise KeyError(f"unknown architecture '{arch}'; known: {', '.join(sorted(MODELS))}")
    return MODELS[arch](num_classes, in_channels, image_size <= SMALL_INPUT_MAX)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())

