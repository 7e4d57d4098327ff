"""timm models as ``timm:<name>``: names, small-input stems, feature layers, local pretrained
weights, and the common CNN families through ONNX export and int8 quantization."""

import os
import subprocess
import sys

import numpy as np
import pytest
import timm
import torch
from pydantic import ValidationError

from conftest import ROOT
from kdpipe.config import RoleConfig, known_architecture
from kdpipe.errors import ConfigError
from kdpipe.methods.common.features import FeatureTap, default_stages
from kdpipe.models import MODELS
from kdpipe.models.checkpoint import ModelInfo
from kdpipe.models.registry import build_model
from kdpipe.onnx_export import export_onnx, onnx_logits, ort_session
from kdpipe.quantize import quantize_int8

# the families the issue names, each small enough to export and quantize in seconds
FAMILIES = ["timm:mobilenetv3_small_050", "timm:efficientnet_b0", "timm:regnetx_002", "timm:convnext_nano"]


def test_timm_names_are_architectures_and_typos_name_the_closest():
    assert known_architecture("timm:mobilenetv3_small_050") == "timm:mobilenetv3_small_050"
    assert "timm:resnet18" in MODELS and "timm:no_such_net" not in MODELS
    with pytest.raises(ValueError, match=r"unknown timm model 'mobilenetv3_smal_050' \(did you mean timm:mobilenetv3_small_050"):
        known_architecture("timm:mobilenetv3_smal_050")
    with pytest.raises(ValidationError, match="unknown timm model 'resnet_18'"):
        RoleConfig(arch="timm:resnet_18", epochs=1)
    with pytest.raises(ValueError, match=r"or timm:<name> for a timm model"):
        known_architecture("mobilenetv3")


def test_small_inputs_keep_their_resolution_in_the_stem():
    mobile = build_model("timm:mobilenetv3_small_050", 10, 3, 32)
    assert mobile.conv_stem.stride == (1, 1) and mobile.conv_stem.in_channels == 3
    resnet = build_model("timm:resnet18", 10, 1, 8)  # one-channel digits
    assert resnet.conv1.stride == (1, 1) and resnet.conv1.in_channels == 1
    assert isinstance(resnet.maxpool, torch.nn.Identity)
    assert resnet(torch.zeros(2, 1, 8, 8)).shape == (2, 10)
    convnext = build_model("timm:convnext_nano", 10, 3, 32)
    assert convnext.stem[0].stride == (4, 4)  # a patchify stem keeps its stride
    large = build_model("timm:mobilenetv3_small_050", 10, 3, 224)
    assert large.conv_stem.stride == (2, 2)  # ImageNet-sized input: timm's own stem


def test_feature_methods_tap_the_last_four_feature_info_stages():
    assert default_stages("timm:mobilenetv3_small_050") == ["blocks.0", "blocks.1", "blocks.3", "blocks.5"]
    assert default_stages("timm:resnet18") == ["layer1", "layer2", "layer3", "layer4"]
    model = build_model("timm:regnetx_002", 10, 3, 32)
    tap = FeatureTap(model, default_stages("timm:regnetx_002"), "student", embedding=True)
    model(torch.zeros(2, 3, 32, 32))
    widths = [tap.outputs[name].shape[1] for name in tap.layers]
    assert widths == [info["num_chs"] for info in model.feature_info][-4:]
    assert tap.outputs["embedding"].shape == (2, model.num_features)


def test_pretrained_weights_load_from_models_imported_timm(tmp_path, monkeypatch):
    """An ImageNet-head weights file at models/imported/timm/<name>.pth: features loaded, the
    classifier replaced for the data's classes."""
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    source = timm.create_model("mobilenetv3_small_050", pretrained=False)  # stands in for ImageNet weights
    (tmp_path / "models/imported/timm").mkdir(parents=True)
    torch.save(source.state_dict(), tmp_path / "models/imported/timm/mobilenetv3_small_050.pth")
    model = build_model("timm:mobilenetv3_small_050", 7, 3, 32, pretrained=True)
    assert torch.equal(model.conv_stem.weight, source.conv_stem.weight)  # the ImageNet stem, stride 2 kept
    assert model.conv_stem.stride == (2, 2) and model.get_classifier().out_features == 7

    (tmp_path / "models/imported/timm/mobilenetv3_small_050.pth").write_bytes(b"not weights")
    with pytest.raises(ConfigError, match=r"models/imported/timm/mobilenetv3_small_050.pth do not load"):
        build_model("timm:mobilenetv3_small_050", 7, 3, 32, pretrained=True)


def test_offline_pretrained_error_names_the_hub_files_and_the_local_file(tmp_path):
    code = ("from kdpipe.models.registry import build_model\n"
            "build_model('timm:mobilenetv3_small_050', 10, 3, 32, pretrained=True)")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert "'timm/mobilenetv3_small_050.lamb_in1k' in the hub cache" in proc.stderr
    assert "models/imported/timm/mobilenetv3_small_050.safetensors" in proc.stderr


@pytest.mark.parametrize("arch", FAMILIES)
def test_common_cnn_families_export_to_onnx_and_quantize_to_int8(tmp_path, arch):
    torch.manual_seed(0)
    model = build_model(arch, 10, 3, 32).eval()
    info = ModelInfo(role="student", arch=arch, num_classes=10, image_shape=(3, 32, 32), class_names=list("0123456789"),
                     mean=[0.0] * 3, std=[1.0] * 3)
    x = torch.randn(8, 3, 32, 32)
    export_onnx(model, info, tmp_path / "fp32.onnx", opset=18)
    with torch.no_grad():
        reference = model(x).numpy()
    assert np.abs(onnx_logits(ort_session(tmp_path / "fp32.onnx"), x.numpy()) - reference).max() < 1e-3
    quantize_int8(tmp_path / "fp32.onnx", tmp_path / "int8.onnx", x.numpy(), "minmax", per_channel=True)
    int8 = onnx_logits(ort_session(tmp_path / "int8.onnx"), x.numpy())
    assert int8.shape == (8, 10) and np.isfinite(int8).all()
    assert (tmp_path / "int8.onnx").stat().st_size < (tmp_path / "fp32.onnx").stat().st_size / 2
