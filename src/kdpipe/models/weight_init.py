"""The weight initialisation of the CIFAR benchmark families, as their reference code
(RepDistiller) writes it: He-normal convolutions (fan-out, ReLU gain), unit-scale BatchNorm, zero
biases; the classifier as each family's reference leaves it."""

from __future__ import annotations

from torch import nn


def he_init(model: nn.Module, linear_std: float | None = None, zero_linear_bias: bool = False) -> None:
    """Initialise ``model`` in place. ``linear_std``: Linear weights ~ N(0, linear_std) and zero
    biases; else ``zero_linear_bias`` zeroes only the biases; else Linear layers keep PyTorch's init."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            if linear_std is not None:
                nn.init.normal_(m.weight, 0, linear_std)
            if linear_std is not None or zero_linear_bias:
                nn.init.zeros_(m.bias)
