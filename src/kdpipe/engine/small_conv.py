"""CPU training: 3x3 convolutions on tiny feature maps computed as one matrix product.

oneDNN's CPU convolutions are fast where feature maps have some size, but on a CIFAR ResNet's
last stage (4x4 maps, 512 channels) forward + backward runs 3 to 4x slower than on the earlier
stages, which do the same arithmetic (``benchmarks/small_conv.py`` times both ways, layer by
layer; im2col + GEMM is about 2x faster there). Written as im2col (nine shifted views, concatenated along channels) and one GEMM,
autograd's backward is two GEMMs and a scatter of the nine views, each in oneDNN's fast range.

This is a workaround a library should provide. It replaces only the arithmetic (same weights,
same module names, the same results up to rounding), only while a training stage runs (its
steps and its per-epoch validation), only on the CPU (``train.small_conv_gemm``), and only where
the output map has at most ``MAX_PIXELS`` pixels. Saved and exported models are untouched
torchvision modules.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

MAX_PIXELS = 16  # 4x4 and smaller; at 8x8 oneDNN's own kernels are as fast or faster


def output_size(size: int, stride: int) -> int:
    """Output side of a 3x3 convolution with padding 1."""
    return (size - 1) // stride + 1


def conv3x3_as_gemm(
    x: torch.Tensor, weight: torch.Tensor, stride: tuple[int, int], bias: torch.Tensor | None = None
) -> torch.Tensor:
    """``F.conv2d(x, weight, bias, stride, padding=1)`` for a 3x3 ``weight`` (groups 1), as
    im2col + one GEMM in channels-last order; the result has ``x``'s memory format."""
    batch, channels, height, width = x.shape
    out_h, out_w = output_size(height, stride[0]), output_size(width, stride[1])
    padded = F.pad(x.permute(0, 2, 3, 1), (0, 0, 1, 1, 1, 1))  # N, H+2, W+2, C
    rows = (slice(i, i + stride[0] * (out_h - 1) + 1, stride[0]) for i in range(3))
    taps = [padded[:, r, slice(j, j + stride[1] * (out_w - 1) + 1, stride[1])] for r in rows for j in range(3)]
    cols = torch.cat(taps, dim=-1).reshape(-1, 9 * channels)  # taps in the weight's (kh, kw, c) order
    kernel = weight.permute(0, 2, 3, 1).reshape(weight.shape[0], 9 * channels)
    # addmm, not "+ bias": under autocast it casts the bias too, so the output stays bf16
    out = cols @ kernel.t() if bias is None else torch.addmm(bias, cols, kernel.t())
    out = out.view(batch, out_h, out_w, -1).permute(0, 3, 1, 2)  # channels-last strides
    return out if x.is_contiguous(memory_format=torch.channels_last) else out.contiguous()


def _eligible(conv: nn.Module) -> bool:
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.padding == (1, 1)
        and conv.dilation == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
        and "forward" not in vars(conv)  # someone else's patch: leave it be
    )


def _forward(conv: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    if x.dim() != 4 or output_size(x.shape[-2], conv.stride[0]) * output_size(x.shape[-1], conv.stride[1]) > MAX_PIXELS:
        return nn.Conv2d.forward(conv, x)
    return conv3x3_as_gemm(x, conv.weight, conv.stride, conv.bias)


@contextlib.contextmanager
def small_convs_as_gemm(modules: Iterable[nn.Module], enabled: bool) -> Iterator[int]:
    """Within the block, eligible ``nn.Conv2d`` among ``modules`` compute tiny outputs as a GEMM
    (the instance's ``forward`` is shadowed, then restored). Yields how many convs it covers."""
    convs = list({id(m): m for m in modules if _eligible(m)}.values()) if enabled else []
    for conv in convs:
        conv.forward = _forward.__get__(conv)
    try:
        yield len(convs)
    finally:
        for conv in convs:
            del conv.forward
