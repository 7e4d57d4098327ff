import pytest
import torch

from kdpipe.errors import MissingInputError
from kdpipe.models.checkpoint import ModelInfo, load_checkpoint, save_checkpoint
from kdpipe.models.registry import MODELS, build_model, count_parameters


@pytest.mark.parametrize("arch", ["resnet18", "resnet34", "resnet50", "mobilenet_v2", "vgg11_bn", "vgg16_bn"])
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 28, 32])
def test_output_shape_for_channels_and_sizes(arch, channels, size):
    model = build_model(arch, num_classes=7, in_channels=channels, image_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, channels, size, size))
    assert out.shape == (2, 7)


def test_small_input_stem_keeps_resolution():
    model = build_model("resnet18", 10, 1, 8)
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1)
    assert isinstance(model.maxpool, torch.nn.Identity)
    big = build_model("resnet18", 10, 3, 224)
    assert big.conv1.kernel_size == (7, 7) and not isinstance(big.maxpool, torch.nn.Identity)


def test_sizes_grow_along_the_chain():
    sizes = [count_parameters(build_model(a, 10, 1, 8)) for a in ("resnet18", "resnet34", "resnet50")]
    assert sizes[0] < sizes[1] < sizes[2]


def test_checkpoint_round_trip(tmp_path):
    model = build_model("resnet18", 3, 1, 8).eval()
    info = ModelInfo("student", "resnet18", 3, (1, 8, 8), ["a", "b", "c"], [0.5], [0.25])
    save_checkpoint(tmp_path / "m.pt", model, info)
    loaded, got = load_checkpoint(tmp_path / "m.pt")
    x = torch.randn(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    assert got.class_names == ["a", "b", "c"] and got.image_shape == (1, 8, 8)
    # the same model saved twice gives the same bytes (DVC then sees an unchanged output)
    save_checkpoint(tmp_path / "again.pt", model, info)
    assert (tmp_path / "m.pt").read_bytes() == (tmp_path / "again.pt").read_bytes()


def test_missing_or_corrupt_checkpoint_is_named(tmp_path):
    with pytest.raises(MissingInputError, match=r"teacher\.pt not found.*dvc repro train_teacher"):
        load_checkpoint(tmp_path / "teacher.pt", "train_teacher")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(MissingInputError, match="bad.pt is not a readable"):
        load_checkpoint(bad)


def test_registry_names():
    assert {"resnet18", "resnet34", "resnet50", "mobilenet_v2", "vgg11_bn", "vgg16_bn"} <= set(MODELS)


def test_vgg_small_input_keeps_three_pools_and_a_linear_head():
    from torch import nn

    from kdpipe.methods.common.features import default_stages

    model = build_model("vgg11_bn", 10, 1, 8)
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.features) == 3
    assert [type(m) for m in model.classifier] == [nn.Linear] and model.classifier[0].in_features == 512
    modules = dict(model.named_modules())
    stages = default_stages("vgg11_bn")
    assert stages == ["features.3", "features.7", "features.14", "features.21"]
    assert all(name in modules for name in stages)
    assert default_stages("vgg16_bn") == ["features.6", "features.13", "features.23", "features.33"]


def test_every_registered_architecture_declares_four_feature_stages_that_exist():
    """Feature methods and evaluate's feature maps tap them (airbench94 once had none: evaluate failed)."""
    from kdpipe.methods.common.features import default_stages
    from kdpipe.models import ARCHITECTURES, MODEL_FILE_ARCHS

    for arch in sorted(set(ARCHITECTURES) - set(MODEL_FILE_ARCHS)):
        stages = default_stages(arch)
        modules = dict(build_model(arch, 10, 3, 32).named_modules())
        assert len(stages) == 4 and all(name in modules for name in stages), arch
