"""``mobilenet_v2_half``: the CIFAR MobileNetV2 of the knowledge-distillation benchmarks (CRD /
RepDistiller's ``mobile_half``, from "Knowledge Distillation via Route Constrained Optimization"):
MobileNetV2 (Sandler et al. 2018) at width 0.5 with expansion 6, 0.81M parameters at 100 classes.

A 3x3 stride-2 stem (16 channels), seven stages of inverted residuals (1x1 expand, 3x3 depthwise,
1x1 linear projection; a skip where the shape allows) at strides 1, 1, 2, 2, 1, 2, 1, a 1x1 conv to
1280 channels (not halved), global average pooling and one Linear layer. Unlike torchvision's
``mobilenet_v2`` it uses ReLU (not ReLU6) and its second stage keeps stride 1 (torchvision's: 2), so
32-px inputs end at 2x2 and 8-px digits at 1x1. Written here from that description; module and parameter names
follow RepDistiller's, so its published checkpoints load with ``load_state_dict``.
"""

from __future__ import annotations

import torch
from torch import nn

from kdpipe.models import MODELS
from kdpipe.models.registry import Spec
from kdpipe.models.weight_init import he_init

# expansion t, output channels c, repeats n, first stride s (before the width multiplier)
SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))
WIDTH = 0.5
LAST_CHANNELS = 1280
# the ends of stages 2, 3, 5 and 7 (RepDistiller's f1..f4: 1/2, 1/4, 1/8 and 1/16 of the input)
FEATURE_LAYERS = ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]


def _conv_bn_relu(c_in: int, c_out: int, kernel: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, kernel, stride, kernel // 2, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


class InvertedResidual(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, expansion: int):
        super().__init__()
        hidden = c_in * expansion
        self.use_res_connect = stride == 1 and c_in == c_out
        self.conv = nn.Sequential(
            nn.Conv2d(c_in, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, c_out, 1, bias=False), nn.BatchNorm2d(c_out),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2Half(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, width: float = WIDTH):
        super().__init__()
        c = int(32 * width)
        self.conv1 = _conv_bn_relu(in_channels, c, 3, 2)
        self.blocks = nn.ModuleList()
        for t, channels, n, s in SETTINGS:
            out = int(channels * width)
            self.blocks.append(nn.Sequential(*(InvertedResidual(c if i == 0 else out, out, s if i == 0 else 1, t)
                                               for i in range(n))))
            c = out
        last = int(LAST_CHANNELS * width) if width > 1.0 else LAST_CHANNELS
        self.conv2 = _conv_bn_relu(c, last, 1, 1)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Linear(last, num_classes))
        he_init(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        for block in self.blocks:
            x = block(x)
        return self.classifier(torch.flatten(self.avgpool(self.conv2(x)), 1))


def _build(num_classes: int, in_channels: int, image_size: int) -> MobileNetV2Half:
    return MobileNetV2Half(num_classes, in_channels)


MODELS.add("mobilenet_v2_half", Spec(_build, feature_layers=FEATURE_LAYERS))
