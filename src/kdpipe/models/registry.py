"""Architecture registry: torchvision models adapted to the data's channels and image size.

Small inputs (CIFAR-sized and below) lose the ImageNet stem's 4x down-sampling: ResNets get a
3x3 stride-1 first convolution and no max-pool, MobileNetV2 a stride-1 first convolution, and
VGGs keep only their first three max-pools (8x down-sampling, so 8-px digits still fit) and
classify the globally pooled 512 features with one Linear layer, as CIFAR VGGs do.
torchvision's model code is used as it is; only the stem (and, for pretrained models, the
classifier) is swapped.

Pretrained (``<role>.pretrained: true``): torchvision's ImageNet weights, read from the torch hub
cache or downloaded. Those keep the ImageNet stem whatever the image size, because their first
filters were learned at that scale; give small images a larger ``data.image_size`` (64 or more,
224 matches ImageNet) so the stem's down-sampling leaves a useful feature map. One-channel data
uses the sum of the RGB filters (the same as feeding the gray image to all three channels).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torchvision import models as tvm

from kdpipe.errors import ConfigError
from kdpipe.models import MODELS

SMALL_INPUT_MAX = 64  # images this size or smaller use the small-input stem (unless pretrained)


class Spec:
    """How to build one architecture: a torchvision factory, its ImageNet weights and its
    adaptation to the data; or (``weights=None``) the project's own model, whose factory takes
    ``num_classes, in_channels, image_size``. ``init_from_data(model, images)``, when set, is
    called once on a freshly built model with normalised training images (fastnet's whitening).
    ``feature_layers``, when set, names the model's four feature stages from early to late (module
    paths), which feature methods tap by default (``methods/common/features.default_stages``).
    ``build``, when set, builds the model from all of ``build_model``'s arguments instead
    (timm models: their own pretrained weights and stems)."""

    def __init__(self, factory: Callable[..., nn.Module] | None = None, weights=None,
                 adapt: Callable[..., None] | None = None,
                 init_from_data: Callable[[nn.Module, torch.Tensor], None] | None = None,
                 feature_layers: list[str] | None = None, build: Callable[..., nn.Module] | None = None):
        self.factory, self.weights, self.adapt, self.init_from_data = factory, weights, adapt, init_from_data
        self.feature_layers = list(feature_layers) if feature_layers is not None else None
        self.build = build


def _gray_from_rgb(conv: nn.Conv2d, in_channels: int) -> nn.Conv2d:
    if in_channels != 1:
        raise ConfigError(f"pretrained ImageNet stems take 1 or 3 input channels, not {in_channels}")
    new = nn.Conv2d(1, conv.out_channels, conv.kernel_size, conv.stride, conv.padding, bias=conv.bias is not None)
    with torch.no_grad():
        new.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
    return new


def _adapt_resnet(model: tvm.ResNet, num_classes: int, in_channels: int, small_input: bool, pretrained: bool) -> None:
    if pretrained:
        model.fc = nn.Linear(model.fc.in_features, num_classes)
        if in_channels != 3:
            model.conv1 = _gray_from_rgb(model.conv1, in_channels)
        return
    if small_input:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")


def _adapt_mobilenet_v2(model: tvm.MobileNetV2, num_classes: int, in_channels: int, small_input: bool, pretrained: bool) -> None:
    stem = model.features[0][0]
    if pretrained:
        model.classifier[1] = nn.Linear(model.classifier[1].in_features, num_classes)
        if in_channels != 3:
            model.features[0][0] = _gray_from_rgb(stem, in_channels)
        return
    if small_input or in_channels != 3:
        stride = 1 if small_input else 2
        model.features[0][0] = nn.Conv2d(in_channels, stem.out_channels, 3, stride, 1, bias=False)
        nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")


def _adapt_vgg(model: tvm.VGG, num_classes: int, in_channels: int, small_input: bool, pretrained: bool) -> None:
    stem = model.features[0]
    if pretrained:
        model.classifier[6] = nn.Linear(model.classifier[6].in_features, num_classes)
        if in_channels != 3:
            model.features[0] = _gray_from_rgb(stem, in_channels)
        return
    if in_channels != 3:
        model.features[0] = nn.Conv2d(in_channels, stem.out_channels, 3, padding=1)
        nn.init.kaiming_normal_(model.features[0].weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(model.features[0].bias)
    if small_input:
        pools = [i for i, m in enumerate(model.features) if isinstance(m, nn.MaxPool2d)]
        for i in pools[3:]:
            model.features[i] = nn.Identity()  # same module names, so feature layers keep theirs
        model.avgpool = nn.AdaptiveAvgPool2d(1)
        model.classifier = nn.Sequential(nn.Linear(model.classifier[0].in_features // 49, num_classes))


def vgg_pool_layers(arch: str) -> list[str]:
    """Module names of the max-pools of a torchvision VGG (``features.<i>``), from its config."""
    config = {"vgg11": "A", "vgg13": "B", "vgg16": "D", "vgg19": "E"}[arch.removesuffix("_bn")]
    names, index = [], 0
    for v in tvm.vgg.cfgs[config]:
        if v == "M":
            names.append(f"features.{index}")
            index += 1
        else:
            index += 3 if arch.endswith("_bn") else 2  # conv (+ bn) + relu
    return names


for _name, _weights in (
    ("resnet18", tvm.ResNet18_Weights.IMAGENET1K_V1),
    ("resnet34", tvm.ResNet34_Weights.IMAGENET1K_V1),
    ("resnet50", tvm.ResNet50_Weights.IMAGENET1K_V2),
    ("resnet101", tvm.ResNet101_Weights.IMAGENET1K_V2),
    ("resnet152", tvm.ResNet152_Weights.IMAGENET1K_V2),
):
    MODELS.add(_name, Spec(getattr(tvm, _name), _weights, _adapt_resnet))
MODELS.add("mobilenet_v2", Spec(tvm.mobilenet_v2, tvm.MobileNet_V2_Weights.IMAGENET1K_V2, _adapt_mobilenet_v2))
for _name, _weights in (("vgg11_bn", tvm.VGG11_BN_Weights.IMAGENET1K_V1), ("vgg16_bn", tvm.VGG16_BN_Weights.IMAGENET1K_V1)):
    MODELS.add(_name, Spec(getattr(tvm, _name), _weights, _adapt_vgg))


def hub_file(weights) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights.url).name


def _load_imagenet(spec: Spec, arch: str) -> nn.Module:
    try:
        return spec.factory(weights=spec.weights)
    except Exception as exc:  # noqa: BLE001 - offline, refused or corrupt: one message
        raise ConfigError(
            f"{arch}: pretrained ImageNet weights need {hub_file(spec.weights)}, which is missing and could "
            f"not be downloaded ({exc}); copy {spec.weights.url} there (TORCH_HOME sets the folder)"
        ) from None


def build_model(
    arch: str, num_classes: int, in_channels: int, image_size: int, pretrained: bool = False, load_weights: bool = True
) -> nn.Module:
    """Build ``arch`` for the data. ``pretrained`` selects the ImageNet variant; ``load_weights=False``
    builds that same structure without reading the weights (to load a checkpoint into it)."""
    if arch not in MODELS:
        raise KeyError(f"unknown architecture '{arch}'; known: {', '.join(sorted(MODELS))}")
    spec = MODELS[arch]
    if spec.build is not None:
        return spec.build(num_classes=num_classes, in_channels=in_channels, image_size=image_size,
                          pretrained=pretrained, load_weights=load_weights)
    if spec.weights is None:
        if pretrained:
            raise ConfigError(f"{arch} has no pretrained weights: set pretrained: false for it")
        return spec.factory(num_classes=num_classes, in_channels=in_channels, image_size=image_size)
    if pretrained and load_weights:
        model = _load_imagenet(spec, arch)
    elif pretrained:
        model = spec.factory(weights=None)
    else:
        # Zero-init of each residual branch's last BN lets deep ResNets train from scratch on
        # tiny data sets (ResNet-50 on digits stalls near 65% without it).
        kwargs = {"zero_init_residual": True} if "resnet" in arch else {}
        model = spec.factory(num_classes=num_classes, **kwargs)
    spec.adapt(model, num_classes, in_channels, image_size <= SMALL_INPUT_MAX, pretrained)
    return model


def init_from_data(arch: str, model: nn.Module, images: torch.Tensor) -> bool:
    """Data-dependent initialisation of a freshly built ``arch`` (False: it has none)."""
    spec = MODELS[arch]
    if spec.init_from_data is None:
        return False
    spec.init_from_data(model, images)
    return True


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, input_shape: tuple[int, int, int]) -> int:
    """Multiply-accumulates of one forward pass at batch 1 (PyTorch's FLOP counter, FLOPs / 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(torch.zeros(1, *input_shape))
    model.train(was_training)
    return counter.get_total_flops() // 2
