"""CIFAR ResNets of the knowledge-distillation benchmarks (CRD, Tian et al. 2020, and the works
that reuse its code: RepDistiller, mdistiller): ``resnet8`` ... ``resnet110`` (16/16/32/64 filters)
and the 4x-wide ``resnet8x4`` / ``resnet32x4`` (32/64/128/256).

He et al.'s CIFAR design (a 3x3 stem, three groups of ``n`` basic blocks at strides 1, 2, 2, depth
``6n + 2``, global average pooling, one Linear layer), with RepDistiller's shortcuts: a 1x1
convolution + BN wherever the shape changes (not the paper's parameter-free option A), so the
parameter counts are those of the KD papers' tables (ResNet-56 0.86M, ResNet-32x4 7.43M at 100
classes). Written here from that description; module and parameter names follow RepDistiller's, so
its published teacher checkpoints load with ``load_state_dict``.

Any input size works: the average pool is global (RepDistiller's fixed 8x8 pool is the same thing
at 32 px), and 8-px digits keep a 2x2 map after the two stride-2 groups.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from kdpipe.models import MODELS
from kdpipe.models.registry import Spec
from kdpipe.models.weight_init import he_init

# name -> (depth, filters of the stem and the three groups)
VARIANTS = {
    "resnet8": (8, (16, 16, 32, 64)),
    "resnet14": (14, (16, 16, 32, 64)),
    "resnet20": (20, (16, 16, 32, 64)),
    "resnet32": (32, (16, 16, 32, 64)),
    "resnet44": (44, (16, 16, 32, 64)),
    "resnet56": (56, (16, 16, 32, 64)),
    "resnet110": (110, (16, 16, 32, 64)),
    "resnet8x4": (8, (32, 64, 128, 256)),
    "resnet32x4": (32, (32, 64, 128, 256)),
}
# the stem's output and the three groups (the feature maps mdistiller's CIFAR ResNets return)
FEATURE_LAYERS = ["relu", "layer1", "layer2", "layer3"]


def conv3x3(c_in: int, c_out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv3x3(c_in, c_out, stride)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(c_out, c_out)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        shortcut = x if self.downsample is None else self.downsample(x)
        return torch.relu(out + shortcut)


class CifarResNet(nn.Module):
    def __init__(self, depth: int, filters: tuple[int, int, int, int], num_classes: int, in_channels: int = 3):
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"a CIFAR ResNet of basic blocks has depth 6n + 2, not {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, filters[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(filters[0])
        self.relu = nn.ReLU(inplace=True)
        c = filters[0]
        for i, (width, stride) in enumerate(zip(filters[1:], (1, 2, 2)), start=1):
            blocks = [BasicBlock(c, width, stride)] + [BasicBlock(width, width) for _ in range(n - 1)]
            self.add_module(f"layer{i}", nn.Sequential(*blocks))
            c = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(c, num_classes)
        he_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _build(num_classes: int, in_channels: int, image_size: int, depth: int, filters) -> CifarResNet:
    return CifarResNet(depth, filters, num_classes, in_channels)


for _name, (_depth, _filters) in VARIANTS.items():
    MODELS.add(_name, Spec(partial(_build, depth=_depth, filters=_filters), feature_layers=FEATURE_LAYERS))
