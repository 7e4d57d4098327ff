"""Wide ResNets (Zagoruyko and Komodakis, 2016) as the knowledge-distillation benchmarks use them
(CRD / RepDistiller / mdistiller): ``wrn_<depth>_<widen>`` for WRN-16-1, WRN-16-2, WRN-40-1 and
WRN-40-2 (WRN-40-2 2.26M parameters at 100 classes).

A 3x3 stem convolution to 16 channels, three groups of ``(depth - 4) / 6`` pre-activation basic
blocks (BN, ReLU, conv) with 16k, 32k and 64k channels at strides 1, 2, 2 (a 1x1 convolution on the
shortcut where the width changes), a final BN + ReLU, global average pooling and one Linear layer;
no dropout (the benchmarks' setting). Written here from that description; module and parameter
names follow RepDistiller's (``block1.layer.0.convShortcut``, ...), so its published teacher
checkpoints load with ``load_state_dict``. The pool is global, so any input size works.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from kdpipe.models import MODELS
from kdpipe.models.registry import Spec
from kdpipe.models.weight_init import he_init

VARIANTS = {"wrn_16_1": (16, 1), "wrn_16_2": (16, 2), "wrn_40_1": (40, 1), "wrn_40_2": (40, 2)}
# the stem's output and the three groups (the feature maps mdistiller's WRNs return; pre-activation
# blocks, so these are before the next BN + ReLU)
FEATURE_LAYERS = ["conv1", "block1", "block2", "block3"]


class BasicBlock(nn.Module):
    """BN, ReLU, 3x3 conv, BN, ReLU, 3x3 conv; where the width changes, the shortcut (a 1x1 conv)
    starts from the activated input too."""

    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(c_in)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.convShortcut = None if c_in == c_out else nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False)  # noqa: N815

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.relu1(self.bn1(x))
        out = self.conv2(self.relu2(self.bn2(self.conv1(activated))))
        shortcut = x if self.convShortcut is None else self.convShortcut(activated)
        return out + shortcut


class Group(nn.Module):
    def __init__(self, blocks: int, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*(BasicBlock(c_in if i == 0 else c_out, c_out, stride if i == 0 else 1)
                                     for i in range(blocks)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer(x)


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"a Wide ResNet has depth 6n + 4, not {depth}")
        n = (depth - 4) // 6
        widths = (16, 16 * widen, 32 * widen, 64 * widen)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.block1 = Group(n, widths[0], widths[1], 1)
        self.block2 = Group(n, widths[1], widths[2], 2)
        self.block3 = Group(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.relu = nn.ReLU(inplace=True)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(widths[3], num_classes)
        he_init(self, zero_linear_bias=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.block3(self.block2(self.block1(self.conv1(x))))
        return self.fc(torch.flatten(self.avgpool(self.relu(self.bn1(x))), 1))


def _build(num_classes: int, in_channels: int, image_size: int, depth: int, widen: int) -> WideResNet:
    return WideResNet(depth, widen, num_classes, in_channels)


for _name, (_depth, _widen) in VARIANTS.items():
    MODELS.add(_name, Spec(partial(_build, depth=_depth, widen=_widen), feature_layers=FEATURE_LAYERS))
