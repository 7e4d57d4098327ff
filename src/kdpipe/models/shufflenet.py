"""CIFAR ShuffleNets of the knowledge-distillation benchmarks (CRD / RepDistiller / mdistiller):
``shufflenet_v1`` (Zhang et al. 2018, 3 groups, 240/480/960 channels, 4/8/4 units) and
``shufflenet_v2`` (Ma et al. 2018, 1x: 116/232/464 channels, 3/7/3 units, a 1x1 conv to 1024).

CIFAR stems as the benchmarks have them: a 1x1 convolution to 24 channels + BN + ReLU and no
max-pool, so the three stages run at 1/2, 1/4 and 1/8 of the input (8-px digits reach 1x1);
global average pooling and one Linear layer. Written here from the papers and that description;
module and parameter names follow RepDistiller's (``ShuffleV1`` / ``ShuffleV2``), so its
checkpoints load with ``load_state_dict``.
"""

from __future__ import annotations

import torch
from torch import nn

from kdpipe.models import MODELS
from kdpipe.models.registry import Spec

# the stem's output and the three stages (the feature maps mdistiller's ShuffleNets return)
FEATURE_LAYERS = ["relu", "layer1", "layer2", "layer3"]
STEM = 24


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """(N, g * c, H, W) -> interleave the ``g`` groups' channels."""
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


class ShuffleV1Unit(nn.Module):
    """1x1 group conv, channel shuffle, 3x3 depthwise conv (stride 1 or 2), 1x1 group conv; added to
    the input, or at stride 2 concatenated with its 3x3 average pool (``out_channels`` then counts
    only the new channels). The first unit after the stem uses one group in its first conv."""

    def __init__(self, c_in: int, c_out: int, stride: int, groups: int):
        super().__init__()
        mid = c_out // 4
        self.stride = stride
        self.first_groups = 1 if c_in == STEM else groups
        self.conv1 = nn.Conv2d(c_in, mid, 1, groups=self.first_groups, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride=stride, padding=1, groups=mid, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, c_out, 1, groups=groups, bias=False)
        self.bn3 = nn.BatchNorm2d(c_out)
        self.shortcut = nn.AvgPool2d(3, stride=2, padding=1) if stride == 2 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = channel_shuffle(torch.relu(self.bn1(self.conv1(x))), self.first_groups)
        out = self.bn3(self.conv3(torch.relu(self.bn2(self.conv2(out)))))
        res = self.shortcut(x)
        return torch.relu(torch.cat([out, res], 1) if self.stride == 2 else out + res)


class ShuffleNetV1(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, widths=(240, 480, 960), units=(4, 8, 4), groups: int = 3):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, STEM, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM)
        self.relu = nn.ReLU(inplace=True)
        c = STEM
        for i, (width, n) in enumerate(zip(widths, units), start=1):
            blocks = []
            for j in range(n):
                blocks.append(ShuffleV1Unit(c, width - c if j == 0 else width, 2 if j == 0 else 1, groups))
                c = width
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(c, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


class ShuffleV2Unit(nn.Module):
    """Half the channels pass through; the other half go 1x1 conv, 3x3 depthwise conv, 1x1 conv;
    the halves are concatenated and shuffled."""

    def __init__(self, channels: int):
        super().__init__()
        c = channels // 2
        self.conv1 = nn.Conv2d(c, c, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, padding=1, groups=c, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv3 = nn.Conv2d(c, c, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, x = x.chunk(2, dim=1)
        out = torch.relu(self.bn1(self.conv1(x)))
        out = torch.relu(self.bn3(self.conv3(self.bn2(self.conv2(out)))))
        return channel_shuffle(torch.cat([kept, out], 1), 2)


class ShuffleV2Down(nn.Module):
    """Stride 2: the left branch (3x3 depthwise conv, 1x1 conv) and the right one (1x1 conv, 3x3
    depthwise conv, 1x1 conv) each give half of the output channels; concatenated and shuffled."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__()
        mid = c_out // 2
        self.conv1 = nn.Conv2d(c_in, c_in, 3, stride=2, padding=1, groups=c_in, bias=False)
        self.bn1 = nn.BatchNorm2d(c_in)
        self.conv2 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(c_in, mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(mid)
        self.conv4 = nn.Conv2d(mid, mid, 3, stride=2, padding=1, groups=mid, bias=False)
        self.bn4 = nn.BatchNorm2d(mid)
        self.conv5 = nn.Conv2d(mid, mid, 1, bias=False)
        self.bn5 = nn.BatchNorm2d(mid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        left = torch.relu(self.bn2(self.conv2(self.bn1(self.conv1(x)))))
        right = torch.relu(self.bn3(self.conv3(x)))
        right = torch.relu(self.bn5(self.conv5(self.bn4(self.conv4(right)))))
        return channel_shuffle(torch.cat([left, right], 1), 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, widths=(116, 232, 464, 1024), units=(3, 7, 3)):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, STEM, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM)
        self.relu = nn.ReLU(inplace=True)
        c = STEM
        for i, (width, n) in enumerate(zip(widths, units), start=1):
            self.add_module(f"layer{i}", nn.Sequential(ShuffleV2Down(c, width), *(ShuffleV2Unit(width) for _ in range(n))))
            c = width
        self.conv2 = nn.Conv2d(c, widths[-1], 1, bias=False)
        self.bn2 = nn.BatchNorm2d(widths[-1])
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.linear(torch.flatten(self.avgpool(x), 1))


def _v1(num_classes: int, in_channels: int, image_size: int) -> ShuffleNetV1:
    return ShuffleNetV1(num_classes, in_channels)


def _v2(num_classes: int, in_channels: int, image_size: int) -> ShuffleNetV2:
    return ShuffleNetV2(num_classes, in_channels)


MODELS.add("shufflenet_v1", Spec(_v1, feature_layers=FEATURE_LAYERS))
MODELS.add("shufflenet_v2", Spec(_v2, feature_layers=FEATURE_LAYERS))
