"""CPU training: 3x3 convolutions on tiny feature maps computed as one matrix product.

oneDNN's CPU convolutions are fast where feature maps have some size, but on a CIFAR ResNet's
last stage (4x4 maps, 512 channels) its backward kernels run several times slower than on the
earlier stages, which do the same arithmetic: there the last stage took about a third of a
ResNet-18 training step (``benchmarks/small_conv.py`` times both ways, layer by layer). Written
as im2col (nine shifted views, concatenated along channels) and one GEMM, autograd's backward is
two GEMMs and a scatter of the nine views, each well within oneDNN's fast range.

This is a workaround a library should provide; it replaces only the arithmetic (same weights,
same module names, the same results up to rounding), only during training, only on the CPU, and
only where the output map has at most ``MAX_PIXELS`` pixels. Saved and exported models are
untouched torchvision modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

MAX_PIXELS = 16  # 4x4 and smaller; at 8x8 oneDNN's own kernels are as fast or faster


def conv3x3_as_gemm(x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int]) -> torch.Tensor:
    """``F.conv2d(x, weight, stride=stride, padding=1)`` for a 3x3 ``weight`` (groups 1, no
    bias), as im2col + one GEMM in channels-last order. Returns a channels-last NCHW tensor."""
    batch, channels, height, width = x.shape
    sh, sw = stride
    out_h, out_w = (height - 1) // sh + 1, (width - 1) // sw + 1
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # N, H+2, W+2, C
    cols = torch.cat(
        [padded[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw] for i in range(3) for j in range(3)],
        dim=-1,
    )  # N, out_h, out_w, 9C, taps in the weight's (kh, kw, c) order
    kernel = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], 9 * channels)
    out = cols.reshape(-1, 9 * channels) @ kernel.t()
    return out.view(batch, out_h, out_w, -1).permute(0, 3, 1, 2)


def _eligible(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def _forward(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    out_pixels = ((x.shape[-2] - 1) // conv.stride[0] + 1) * ((x.shape[-1] - 1) // conv.stride[1] + 1)
    if x.dim() != 4 or out_pixels > MAX_PIXELS:
        return nn.Conv2d.forward(conv, x)
    out = conv3x3_as_gemm(x, conv.weight, conv.stride)
    return out if conv.bias is None else out + conv.bias.view(1, -1, 1, 1)


@contextlib.contextmanager
def small_convs_as_gemm(modules: Iterable[nn.Module], enabled: bool) -> Iterator[int]:
    """Within the block, eligible ``nn.Conv2d`` among ``modules`` compute tiny outputs as a GEMM
    (the instance's ``forward`` is shadowed, then restored). Yields how many convs it covers."""
    convs = [m for m in modules if _eligible(m)] if enabled else []
    for conv in convs:
        conv.forward = _forward.__get__(conv)
    try:
        yield len(convs)
    finally:
        for conv in convs:
            del conv.forward
