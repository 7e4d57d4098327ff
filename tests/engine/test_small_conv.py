"""The CPU path for 3x3 convolutions on tiny maps (im2col + GEMM) computes what F.conv2d does."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdpipe.engine import small_conv
from kdpipe.engine.small_conv import MAX_PIXELS, conv3x3_as_gemm, small_convs_as_gemm
from kdpipe.models.registry import build_model


@pytest.mark.parametrize(
    "shape,stride", [((4, 4), (1, 1)), ((2, 2), (1, 1)), ((1, 1), (1, 1)), ((3, 3), (1, 1)), ((8, 8), (2, 2)),
                     ((7, 7), (2, 2)), ((5, 5), (3, 3)), ((4, 6), (2, 1)), ((6, 3), (1, 2))]
)
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.parametrize("with_bias", [False, True])
def test_conv3x3_as_gemm_matches_conv2d_forward_and_backward(shape, stride, channels_last, with_bias):
    g = torch.Generator().manual_seed(shape[0] * 10 + shape[1])
    x = torch.randn(5, 6, *shape, generator=g, dtype=torch.float64)
    w = torch.randn(7, 6, 3, 3, generator=g, dtype=torch.float64)
    bias = torch.randn(7, generator=g, dtype=torch.float64) if with_bias else None
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    x, w = x.to(memory_format=memory_format), w.to(memory_format=memory_format)
    grad = None
    results = []
    for conv in (F.conv2d, lambda a, b, c, s, padding: conv3x3_as_gemm(a, b, s, c)):
        a, b = x.clone().requires_grad_(), w.clone().requires_grad_()
        c = bias.clone().requires_grad_() if with_bias else None
        out = conv(a, b, c, stride, padding=1)
        grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(1), dtype=out.dtype) if grad is None else grad
        out.backward(grad)
        results.append((out, a.grad, b.grad, c.grad if with_bias else None))
    assert results[1][0].is_contiguous(memory_format=memory_format)  # the input's layout, like F.conv2d
    for reference, gemm in zip(*results, strict=True):
        torch.testing.assert_close(gemm, reference)


def test_under_bf16_autocast_the_output_is_bf16_even_with_a_bias():
    """As with F.conv2d: an fp32 bias must not promote the block's activations back to fp32."""
    x, w, bias = torch.randn(2, 8, 4, 4), torch.randn(8, 8, 3, 3), torch.randn(8)
    with torch.autocast("cpu", torch.bfloat16):
        reference, gemm = F.conv2d(x, w, bias, padding=1), conv3x3_as_gemm(x, w, (1, 1), bias)
    assert gemm.dtype == reference.dtype == torch.bfloat16
    torch.testing.assert_close(gemm.float(), reference.float(), rtol=0.02, atol=0.1)


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


def test_a_module_listed_twice_or_patched_by_someone_else_is_handled():
    conv, other = nn.Conv2d(4, 4, 3, padding=1), nn.Conv2d(4, 4, 3, padding=1)
    theirs = other.forward = lambda x: x  # another patch: kept, not replaced and not deleted
    with small_convs_as_gemm([conv, conv, other], enabled=True) as covered:
        assert covered == 1
    assert "forward" not in vars(conv) and other.forward is theirs


def test_resnet18_training_step_is_unchanged_up_to_rounding(monkeypatch):
    """A CIFAR ResNet-18 (last stage at 4x4) trains to the same loss and gradients either way."""
    calls = []
    real = small_conv.conv3x3_as_gemm
    monkeypatch.setattr(small_conv, "conv3x3_as_gemm", lambda *a: calls.append(a[0].shape[-1]) or real(*a))
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
    assert covered == 17  # every 3x3 conv (the stem and two per block) ...
    assert calls == [8, 4, 4, 4]  # ... but only layer4's four, with 4x4 outputs, took the GEMM path
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-6)
    for gemm, reference in zip(results[1][1], results[0][1], strict=True):
        torch.testing.assert_close(gemm, reference, rtol=1e-4, atol=1e-5)
