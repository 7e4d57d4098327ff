"""CIFAR VGGs of the knowledge-distillation benchmarks (CRD / RepDistiller / mdistiller): ``vgg8``,
``vgg11``, ``vgg13``, ``vgg16``, ``vgg19``, all with BatchNorm (the benchmarks' ``vgg8`` is
RepDistiller's ``vgg8_bn``, and so on). Not torchvision's ``vgg11_bn`` / ``vgg16_bn`` (registered
in ``models/registry.py``): no 4096-wide classifier, a 512 -> classes Linear layer instead.

Five groups of 3x3 conv + BN + ReLU (``block0`` ... ``block4``), a 2x2 max-pool after each of the
first three (and after the fourth for inputs of 64 px or more; RepDistiller: exactly 64), global average pooling
and ``Linear(512, classes)``. Written here from that description; module and parameter names
follow RepDistiller's, so its published checkpoints load with ``load_state_dict``. 8-px digits
leave a 1x1 map after three pools, so every size from 8 px up works.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from kdpipe.models import MODELS
from kdpipe.models.registry import Spec
from kdpipe.models.weight_init import he_init

# widths of the five conv groups
CONFIGS = {
    "vgg8": ((64,), (128,), (256,), (512,), (512,)),
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg13": ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
    "vgg19": ((64, 64), (128, 128), (256, 256, 256, 256), (512, 512, 512, 512), (512, 512, 512, 512)),
}
# the ends (after ReLU) of the last four conv groups, the deepest being the map the classifier
# pools: RepDistiller's f1..f4 (its f0, the first group at full resolution, is left out)
FEATURE_LAYERS = ["block1", "block2", "block3", "block4"]


def _group(c_in: int, widths: tuple[int, ...]) -> nn.Sequential:
    layers = []
    for width in widths:
        layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
        c_in = width
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    def __init__(self, config, num_classes: int, in_channels: int = 3, pool_fourth: bool = False):
        super().__init__()
        c = in_channels
        for i, widths in enumerate(config):
            self.add_module(f"block{i}", _group(c, widths))
            c = widths[-1]
        self.pool0, self.pool1, self.pool2 = (nn.MaxPool2d(2, 2) for _ in range(3))
        self.pool3 = nn.MaxPool2d(2, 2) if pool_fourth else nn.Identity()
        self.pool4 = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, num_classes)
        he_init(self, linear_std=0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool0(self.block0(x))
        x = self.pool1(self.block1(x))
        x = self.pool2(self.block2(x))
        x = self.pool3(self.block3(x))
        x = self.pool4(self.block4(x))
        return self.classifier(torch.flatten(x, 1))


def _build(num_classes: int, in_channels: int, image_size: int, config) -> CifarVGG:
    return CifarVGG(config, num_classes, in_channels, pool_fourth=image_size >= 64)


for _name, _config in CONFIGS.items():
    MODELS.add(_name, Spec(partial(_build, config=_config), feature_layers=FEATURE_LAYERS))
