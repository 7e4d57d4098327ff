"""The CIFAR knowledge-distillation benchmark architectures: reference parameter counts, any data
shape, default feature stages every feature method can tap, a distillation pair, ONNX export."""

import pytest
import torch
from methods.test_methods import make

from kdpipe.methods import Batch
from kdpipe.methods.common.features import FeatureTap, default_stages
from kdpipe.models import ARCHITECTURES
from kdpipe.models.registry import MODELS, build_model, count_parameters

# Parameters at 100 classes, 3x32x32, of the reference implementations: HobbitLong/RepDistiller
# models/{resnet,wrn,vgg,ShuffleNetv1,ShuffleNetv2,mobilenetv2}.py (commit eedab9d / b13aecc),
# instantiated with num_classes=100 (the benchmarks' vgg<N> is its vgg<N>_bn, shufflenet_v1/v2 its
# ShuffleV1/ShuffleV2, mobilenet_v2_half its mobile_half). deepnn/lightnn: the PyTorch KD
# tutorial's 1,186,986 / 267,738 at 10 classes (checked below), plus 90 more outputs of the last Linear.
REFERENCE_PARAMS = {
    "resnet8": 83_892,
    "resnet14": 181_108,
    "resnet20": 278_324,
    "resnet32": 472_756,
    "resnet44": 667_188,
    "resnet56": 861_620,
    "resnet110": 1_736_564,
    "resnet8x4": 1_233_540,
    "resnet32x4": 7_433_860,
    "wrn_16_1": 180_916,
    "wrn_16_2": 703_284,
    "wrn_40_1": 569_780,
    "wrn_40_2": 2_255_156,
    "vgg8": 3_965_028,
    "vgg11": 9_277_284,
    "vgg13": 9_462_180,
    "vgg16": 14_774_436,
    "vgg19": 20_086_692,
    "shufflenet_v1": 949_258,
    "shufflenet_v2": 1_355_528,
    "mobilenet_v2_half": 812_836,
    "deepnn": 1_186_986 + 90 * 513,
    "lightnn": 267_738 + 90 * 257,
}
NEW = sorted(REFERENCE_PARAMS)
# Published figures (CRD, Tian et al. 2020, Table 1-2 at CIFAR-100), to their printed precision.
# ResNet-20's 0.27M is He et al.'s 10-class count: 100 classes give 0.28M (278,324).
PUBLISHED_M = {
    ("resnet56", 100): "0.86", ("resnet110", 100): "1.7", ("resnet8x4", 100): "1.23",
    ("resnet32x4", 100): "7.43", ("wrn_16_2", 100): "0.70", ("wrn_40_2", 100): "2.26", ("resnet20", 10): "0.27",
}


def test_all_registered():
    assert set(NEW) | {"resnet101", "resnet152"} <= set(MODELS)
    assert all(ARCHITECTURES[a] != "registry" for a in NEW)


@pytest.mark.parametrize("arch", NEW)
def test_parameter_count_matches_the_reference(arch):
    assert count_parameters(build_model(arch, 100, 3, 32)) == REFERENCE_PARAMS[arch]


@pytest.mark.parametrize("arch, classes", sorted(PUBLISHED_M))
def test_parameter_count_matches_the_papers(arch, classes):
    digits = len(PUBLISHED_M[arch, classes].split(".")[1])
    assert f"{count_parameters(build_model(arch, classes, 3, 32)) / 1e6:.{digits}f}" == PUBLISHED_M[arch, classes]


def test_tutorial_cnns_have_the_tutorials_counts():
    assert count_parameters(build_model("deepnn", 10, 3, 32)) == 1_186_986
    assert count_parameters(build_model("lightnn", 10, 3, 32)) == 267_738
    # other sizes: the first Linear takes the flattened C x H/4 x W/4 map
    assert build_model("deepnn", 10, 1, 8).classifier[0].in_features == 32 * 2 * 2
    assert build_model("lightnn", 10, 1, 28).classifier[0].in_features == 16 * 7 * 7


@pytest.mark.parametrize("arch", NEW)
@pytest.mark.parametrize("channels, size", [(1, 8), (3, 32)])
def test_builds_for_the_data_and_its_stages_give_feature_maps(arch, channels, size):
    torch.manual_seed(0)
    model = build_model(arch, 7, channels, size).train()
    stages = default_stages(arch)
    assert len(stages) == 4
    modules = dict(model.named_modules())
    assert all(name in modules for name in stages)
    tap = FeatureTap(model, stages, "test")
    out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)
    features = tap.features()
    assert all(f.ndim == 4 and f.shape[0] == 2 for f in features)
    # the taps are not overwritten in place later in the forward pass (autograd would refuse)
    (out.sum() + sum(f.float().pow(2).mean() for f in features)).backward()
    tap.remove()


def test_existing_architectures_keep_their_stages():
    for arch in ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152"):
        assert default_stages(arch) == ["layer1", "layer2", "layer3", "layer4"]
    assert default_stages("mobilenet_v2") == ["features.3", "features.6", "features.13", "features.18"]
    assert default_stages("vgg11_bn") == ["features.3", "features.7", "features.14", "features.21"]
    assert default_stages("vgg16_bn") == ["features.6", "features.13", "features.23", "features.33"]
    assert default_stages("fastnet_s") == ["stem", "group1", "group2", "group3"]
    # CIFAR networks whose names share a torchvision prefix get their own
    assert default_stages("resnet20") == ["relu", "layer1", "layer2", "layer3"]
    assert default_stages("vgg8") == ["block1", "block2", "block3", "block4"]
    assert default_stages("mobilenet_v2_half") == ["blocks.1", "blocks.2", "blocks.4", "blocks.6"]


def test_torchvision_resnet101_and_152():
    from torchvision import models as tvm

    assert MODELS["resnet101"].weights is tvm.ResNet101_Weights.IMAGENET1K_V2
    assert MODELS["resnet152"].weights is tvm.ResNet152_Weights.IMAGENET1K_V2
    model = build_model("resnet101", 7, 1, 8).eval()
    assert model.conv1.kernel_size == (3, 3) and isinstance(model.maxpool, torch.nn.Identity)
    with torch.no_grad():
        assert model(torch.randn(2, 1, 8, 8)).shape == (2, 7)


@pytest.mark.parametrize("method", ["fitnets", "at"])
@pytest.mark.parametrize("student, teacher", [
    ("resnet20", "resnet56"), ("resnet8x4", "resnet32x4"), ("wrn_16_2", "wrn_40_2"), ("vgg8", "vgg13"),
    ("shufflenet_v1", "resnet32x4"), ("shufflenet_v2", "wrn_40_2"), ("mobilenet_v2_half", "vgg13"),
    ("lightnn", "deepnn"),
])
def test_feature_methods_distil_between_benchmark_pairs(method, student, teacher):
    m = make(method, student, teacher)
    m.train()
    logits, loss, _ = m(Batch(torch.randn(8, 1, 8, 8), torch.arange(8) % 10))
    loss.backward()
    assert logits.shape == (8, 10) and torch.isfinite(loss)
    assert all(p.grad is not None for p in m.student.parameters() if p.requires_grad)
    m.close()


@pytest.mark.parametrize("arch", ["resnet20", "wrn_16_2", "vgg8", "shufflenet_v2", "mobilenet_v2_half", "lightnn"])
def test_onnx_export(arch, tmp_path):
    from kdpipe.models.checkpoint import ModelInfo
    from kdpipe.onnx_export import check_parity, export_onnx

    torch.manual_seed(0)
    model = build_model(arch, 10, 3, 32).eval()
    info = ModelInfo("student", arch, 10, (3, 32, 32), [str(i) for i in range(10)], [0.5] * 3, [0.25] * 3)
    export_onnx(model, info, tmp_path / "m.onnx", opset=18)
    assert check_parity(model, tmp_path / "m.onnx", torch.randn(4, 3, 32, 32), atol=1e-4) <= 1e-4
