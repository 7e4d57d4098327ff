"""``fastnet``: a CIFAR-class network built for few epochs on a CPU, after the ideas of airbench
(Keller Jordan, "94% on CIFAR-10 in 3.29 seconds on a single GPU", 2024): a frozen 2x2 patch-
whitening convolution initialised from the training images, then three groups of two 3x3
convolutions (BatchNorm with a fixed scale, max-pool after the first, ReLU), a global max-pool
and a scaled linear classifier. Written here from the paper's description; the training recipe
(label smoothing, SGD with Nesterov momentum, one-cycle) is params.

Three changes for int8 deployment: PyTorch's default convolution init instead of airbench's
identity (dirac) init, whose one large tap a filter left its other weights 1/34 of the per-channel
int8 range (4-5% weight error a layer); ReLU instead of airbench's GELU (ONNX spells GELU as Div, Erf,
Add and Mul, each quantized on its own); and BatchNorm before the pool, so it folds into the convolution.

``airbench94`` is the network as published, for a teacher that is never quantized: GELU,
identity init, BatchNorm after the pool (the three departures undone; fastnet's widths).

Variants share one definition; only widths (and, for ``airbench94``, those three choices) differ. MACs scale with width squared, so the half-
width ``fastnet_s`` costs about a quarter of ``fastnet`` (tests/models check the ratio).
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from kdpipe.models import MODELS
from kdpipe.models.registry import Spec

# name -> widths of the three groups (fastnet: airbench94's 64/256/256), and whether airbench's
# own layer choices are kept (GELU, identity init, pool before BatchNorm)
VARIANTS = {
    "fastnet": ((64, 256, 256), False),
    "fastnet_s": ((24, 128, 128), False),
    "fastnet_l": ((128, 384, 384), False),
    "airbench94": ((64, 256, 256), True),
}
WHITEN_KERNEL = 2
WHITEN_EPS = 5e-4  # added to the patch covariance's eigenvalues (airbench's value)
LOGIT_SCALE = 1 / 9  # airbench's output scaling: a softer start for the cross-entropy


def _bn(channels: int) -> nn.BatchNorm2d:
    # A fixed scale (only the shift learns), as airbench: fewer parameters to tune, same accuracy.
    bn = nn.BatchNorm2d(channels, eps=1e-12, momentum=0.4)
    bn.weight.requires_grad_(False)
    return bn


def _conv(c_in: int, c_out: int, identity_init: bool) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    if identity_init:  # airbench: the first c_in filters pass their input channel through
        with torch.no_grad():
            nn.init.dirac_(conv.weight[: min(c_in, c_out)])
    return conv


class ConvGroup(nn.Sequential):
    def __init__(self, c_in: int, c_out: int, ceil_pool: bool, airbench: bool = False):
        act = nn.GELU if airbench else partial(nn.ReLU, inplace=True)
        pool = nn.MaxPool2d(2, ceil_mode=ceil_pool)
        # fastnet: BN before the pool (airbench pools first): with its scale fixed at 1 the two
        # commute at inference, and BN right after the conv folds into it for ONNX and int8
        first = [pool, _bn(c_out)] if airbench else [_bn(c_out), pool]
        super().__init__(
            _conv(c_in, c_out, airbench), *first, act(),
            _conv(c_out, c_out, airbench), _bn(c_out), act(),
        )


class FastNet(nn.Module):
    def __init__(self, num_classes: int, in_channels: int = 3, widths: tuple[int, ...] = VARIANTS["fastnet"][0],
                 small_input: bool = False, airbench: bool = False):
        super().__init__()
        whiten_out = 2 * in_channels * WHITEN_KERNEL**2  # each eigen-direction and its negation
        act = nn.GELU() if airbench else nn.ReLU(inplace=True)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, whiten_out, WHITEN_KERNEL, bias=True), act)
        self.stem[0].weight.requires_grad_(False)  # set from the data by init_from_data, then frozen
        c = whiten_out
        for i, width in enumerate(widths, start=1):
            # ceil-mode pools keep 8-px inputs (digits) spatial through three halvings
            self.add_module(f"group{i}", ConvGroup(c, width, ceil_pool=small_input, airbench=airbench))
            c = width
        self.fc = nn.Linear(c, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.group3(self.group2(self.group1(self.stem(x))))
        # global max-pool as a reduction: no Reshape in the ONNX graph, which onnxruntime's
        # quantization pre-processing (symbolic shape inference) fails on after a pooling op
        return self.fc(x.amax(dim=(2, 3))) * LOGIT_SCALE


@torch.no_grad()
def init_from_data(model: FastNet, images: torch.Tensor) -> None:
    """Whitening filters from the covariance of the training images' 2x2 patches (``images``:
    normalised, N x C x H x W): each eigenvector scaled by 1/sqrt(eigenvalue), and its negation,
    so the stem's output has unit variance in every direction of patch space."""
    conv = model.stem[0]
    c, k = conv.in_channels, WHITEN_KERNEL
    patches = images.float().unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
    patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k)
    patches = patches - patches.mean(0)
    cov = patches.T @ patches / len(patches)
    eigenvalues, eigenvectors = torch.linalg.eigh(cov.double())
    filters = (eigenvectors.T / torch.sqrt(eigenvalues + WHITEN_EPS)[:, None]).float().reshape(-1, c, k, k)
    conv.weight.copy_(torch.cat([filters, -filters]))
    conv.bias.zero_()


def _build(num_classes: int, in_channels: int, image_size: int, widths: tuple[int, ...], airbench: bool) -> FastNet:
    # below 16 px, floor-mode pools would shrink the map to nothing after three halvings
    return FastNet(num_classes, in_channels, widths, small_input=image_size < 16, airbench=airbench)


FEATURE_LAYERS = ["stem", "group1", "group2", "group3"]  # what the feature methods (and evaluate's maps) tap

for _name, (_widths, _airbench) in VARIANTS.items():
    MODELS.add(_name, Spec(partial(_build, widths=_widths, airbench=_airbench), init_from_data=init_from_data,
                           feature_layers=FEATURE_LAYERS))
