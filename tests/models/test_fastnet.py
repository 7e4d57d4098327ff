"""fastnet: one definition, variants by width; whitening from the data; every method, ONNX."""

import numpy as np
import pytest
import torch

from kdpipe.config import StudentDistillConfig
from kdpipe.methods import METHODS, Batch, MethodContext, build_method
from kdpipe.models.registry import MODELS, build_model, count_macs, init_from_data


def test_the_student_costs_at_most_a_quarter_of_the_teacher():
    teacher, student = (count_macs(build_model(a, 10, 3, 32), (3, 32, 32)) for a in ("fastnet", "fastnet_s"))
    assert student <= teacher / 4
    assert 100e6 < teacher < 130e6  # airbench94's shape: about 118M multiply-accumulates at 32 px


def test_whitening_filters_come_from_the_data_and_stay_frozen():
    torch.manual_seed(0)
    # correlated channels with different scales: whitening must undo both
    base = torch.randn(512, 1, 32, 32)
    x = torch.cat([base, 2 * base + 0.5 * torch.randn_like(base), 3 * torch.randn(512, 1, 32, 32)], dim=1)
    model = build_model("fastnet", 10, 3, 32)
    assert init_from_data("fastnet", model, x)
    out = model.stem[0](x).detach()
    half = out.shape[1] // 2
    cov = torch.cov(out[:, :half].permute(1, 0, 2, 3).reshape(half, -1))
    assert torch.allclose(cov, torch.eye(half), atol=0.05)  # unit variance, uncorrelated
    assert not model.stem[0].weight.requires_grad
    assert not init_from_data("resnet18", build_model("resnet18", 10, 3, 32), x)  # no data-dependent init


@pytest.mark.parametrize("arch", ["fastnet", "fastnet_s", "fastnet_l", "airbench94"])
@pytest.mark.parametrize("channels, size", [(1, 8), (3, 32), (3, 64)])
def test_every_variant_fits_the_data(arch, channels, size):
    model = build_model(arch, 7, channels, size).eval()
    assert model(torch.randn(2, channels, size, size)).shape == (2, 7)


def test_no_pretrained_weights():
    from kdpipe.errors import ConfigError

    with pytest.raises(ConfigError, match="fastnet has no pretrained weights"):
        build_model("fastnet", 10, 3, 32, pretrained=True)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_distils_fastnet_into_fastnet_s(name):
    torch.manual_seed(0)
    shape = (3, 16, 16)
    student, teacher = build_model("fastnet_s", 10, 3, 16), build_model("fastnet", 10, 3, 16).eval()
    ctx = MethodContext(input_shape=shape, student_arch="fastnet_s", teacher_arch="fastnet",
                        build_network=lambda arch: build_model(arch, 10, 3, 16), num_train=64)
    method = build_method(name, student, teacher if METHODS[name].needs_teacher else None,
                          StudentDistillConfig(method=name), 0.0, ctx)
    method.train()
    logits, loss, _ = method(Batch(torch.randn(8, *shape), torch.arange(8) % 10,
                                   torch.arange(8) if method.needs_indices else None))
    loss.backward()
    assert logits.shape == (8, 10) and torch.isfinite(loss)
    assert all(p.grad is not None for p in method.student.parameters() if p.requires_grad)
    method.close()


def test_onnx_export_and_static_int8(tmp_path):
    from kdpipe.models.checkpoint import ModelInfo
    from kdpipe.onnx_export import check_parity, export_onnx, onnx_logits, ort_session
    from kdpipe.quantize import quantize_int8

    torch.manual_seed(0)
    model = build_model("fastnet_s", 10, 3, 32).eval()
    x = torch.randn(64, 3, 32, 32)
    init_from_data("fastnet_s", model, x)
    info = ModelInfo("student", "fastnet_s", 10, (3, 32, 32), [str(i) for i in range(10)], [0.5] * 3, [0.25] * 3)
    fp32, int8 = tmp_path / "m.onnx", tmp_path / "m_int8.onnx"
    export_onnx(model, info, fp32, opset=18)
    assert check_parity(model, fp32, x[:8], atol=1e-4) <= 1e-4
    quantize_int8(fp32, int8, x.numpy(), "minmax", per_channel=True)
    ref = onnx_logits(ort_session(fp32), x.numpy())
    got = onnx_logits(ort_session(int8), x.numpy())
    assert int8.stat().st_size < fp32.stat().st_size / 3
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.8  # int8 keeps most decisions of an untrained net

    # the per-layer report: graph order, every convolution's weights, figures in a sane range
    from kdpipe.quant_report import layer_errors

    report = layer_errors(fp32, int8, x[:32].numpy())
    names = [a["tensor"] for a in report["activations"]]
    assert names[0] == "input" and names[-1] == "logits"
    assert all(5 < a["model_sqnr_db"] < 80 for a in report["activations"][:-1])
    convs = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert convs <= {w["tensor"] for w in report["weights"]}
    assert all(w["sqnr_db"] is None or w["sqnr_db"] > 25 for w in report["weights"] if w["tensor"] in convs)
    # the file as shipped (fused int8 kernels) agrees with the QDQ graph the layers were read from
    logits = report["logits"]
    assert logits["qdq_graph_sqnr_db"] > 10 and abs(logits["shipped_sqnr_db"] - logits["qdq_graph_sqnr_db"]) < 6


def test_registered():
    assert {"fastnet", "fastnet_s", "fastnet_l", "airbench94"} <= set(MODELS)


def test_airbench94_keeps_the_published_layers_and_costs_what_fastnet_costs():
    """GELU, identity-initialised convolutions and the pool before BatchNorm; fastnet's widths."""
    model = build_model("airbench94", 10, 3, 32)
    group = model.group1
    assert [type(m).__name__ for m in group] == ["Conv2d", "MaxPool2d", "BatchNorm2d", "GELU", "Conv2d", "BatchNorm2d", "GELU"]
    conv2 = group[4].weight  # 64 -> 64: every filter is the identity on its own channel
    assert torch.equal(conv2[:, :, 1, 1], torch.eye(64)) and conv2.abs().sum() == 64
    assert count_macs(model, (3, 32, 32)) == count_macs(build_model("fastnet", 10, 3, 32), (3, 32, 32))
