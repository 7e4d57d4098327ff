"""The CPU path for 3x3 convolutions on tiny maps (im2col + GEMM) computes what F.conv2d does."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.engine import small_conv
from kdpipe.engine.small_conv import MAX_PIXELS, conv3x3_as_gemm, small_convs_as_gemm
from kdpipe.models.registry import build_model


@pytest.mark.parametrize("size,stride", [(4, 1), (2, 1), (1, 1), (3, 1), (8, 2), (7, 2), (5, 3)])
@pytest.mark.parametrize("channels_last", [True, False])
def test_conv3x3_as_gemm_matches_conv2d_forward_and_backward(size, stride, channels_last):
    g = torch.Generator().manual_seed(size * 10 + stride)
    x = torch.randn(5, 6, size, size, generator=g, dtype=torch.float64)
    w = torch.randn(7, 6, 3, 3, generator=g, dtype=torch.float64)
    if channels_last:
        x, w = x.to(memory_format=torch.channels_last), w.to(memory_format=torch.channels_last)
    grad = None
    results = []
    for conv in (lambda a, b: F.conv2d(a, b, stride=stride, padding=1), lambda a, b: conv3x3_as_gemm(a, b, (stride, stride))):
        a, b = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = conv(a, b)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype) if grad is None else grad
        out.backward(grad)
        results.append((out, a.grad, b.grad))
    for reference, gemm in zip(*results, strict=True):
        torch.testing.assert_close(gemm, reference)


def test_only_eligible_convs_on_tiny_maps_take_the_gemm_path(monkeypatch):
    calls = []
    real = small_conv.conv3x3_as_gemm
    monkeypatch.setattr(small_conv, "conv3x3_as_gemm", lambda *a: calls.append(a[0].shape) or real(*a))
    convs = [nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1, groups=2), nn.Conv2d(4, 4, 1),
             nn.Conv2d(4, 4, 3, padding=1, bias=True, stride=2)]
    with small_convs_as_gemm(convs, enabled=True) as covered:
        assert covered == 2  # the grouped and the 1x1 conv keep oneDNN's kernels
        big = torch.randn(2, 4, 8, 8)  # 64 output pixels > MAX_PIXELS: oneDNN's own kernel
        tiny = torch.randn(2, 4, 4, 4)
        for conv in convs:
            for x in (big, tiny):
                torch.testing.assert_close(conv(x), F.conv2d(x, conv.weight, conv.bias, conv.stride, conv.padding, groups=conv.groups))
    assert MAX_PIXELS == 16
    # conv 0 on the 4x4 map, conv 3 (stride 2) on both: 8x8 -> 4x4 and 4x4 -> 2x2
    assert calls == [torch.Size([2, 4, 4, 4]), torch.Size([2, 4, 8, 8]), torch.Size([2, 4, 4, 4])]
    calls.clear()
    convs[0](tiny)  # restored on exit
    assert calls == [] and "forward" not in vars(convs[0])


def test_disabled_leaves_the_model_alone():
    conv = nn.Conv2d(4, 4, 3, padding=1)
    with small_convs_as_gemm([conv], enabled=False) as covered:
        assert covered == 0 and "forward" not in vars(conv)


def test_resnet18_training_step_is_unchanged_up_to_rounding():
    """A CIFAR ResNet-18 (last stage at 4x4) trains to the same loss and gradients either way."""
    torch.manual_seed(0)
    model = build_model("resnet18", 10, 3, 32).to(memory_format=torch.channels_last)
    x, y = torch.randn(8, 3, 32, 32).to(memory_format=torch.channels_last), torch.randint(0, 10, (8,))
    results = []
    for enabled in (False, True):
        model.zero_grad()
        with small_convs_as_gemm(model.modules(), enabled) as covered:
            loss = F.cross_entropy(model(x), y)
            loss.backward()
        results.append((loss.detach(), [p.grad.clone() for p in model.parameters()]))
    assert covered == 17  # every 3x3 conv (the stem and two per block); only layer4's (4x4 outputs) take the GEMM path
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    for gemm, reference in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(gemm, reference, rtol=1e-4, atol=1e-5)
