"""A teacher that is a whole-model file (arch onnx / torchscript): checked against the data,
carried inside the kdpipe checkpoint, logits only."""

import pytest
import torch
from pydantic import ValidationError

from kdpipe.config import RoleConfig
from kdpipe.data.prepared import PreparedMeta
from kdpipe.errors import ConfigError, DataError
from kdpipe.methods import MethodContext, build_method
from kdpipe.models.checkpoint import ModelInfo, load_checkpoint, save_checkpoint
from kdpipe.models.file_model import FileModel
from kdpipe.models.imported import load_weights
from kdpipe.models.registry import build_model
from kdpipe.onnx_export import export_onnx

CLASSES = [str(i) for i in range(10)]
META = PreparedMeta("digits", CLASSES, 1, 8, 8, [0.5], [0.25], {"train": 10, "val": 10, "test": 10})


def _info(classes=CLASSES, mean=(0.5,)):
    return ModelInfo(role="teacher", arch="resnet8", num_classes=len(classes), image_shape=(1, 8, 8),
                     class_names=list(classes), mean=list(mean), std=[0.25])


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return build_model("resnet8", 10, 1, 8).eval()


@pytest.fixture(scope="module")
def files(tmp_path_factory, network):
    tmp_path = tmp_path_factory.mktemp("files")
    onnx_path, ts_path = tmp_path / "teacher.onnx", tmp_path / "teacher_ts.pt"
    export_onnx(network, _info(), onnx_path, opset=18)
    torch.jit.save(torch.jit.trace(network, torch.zeros(2, 1, 8, 8)), ts_path)
    return onnx_path, ts_path


@pytest.mark.parametrize("kind", ["onnx", "torchscript"])
def test_a_model_file_gives_the_networks_logits_and_survives_the_checkpoint(files, network, tmp_path, kind):
    path = files[0] if kind == "onnx" else files[1]
    model = build_model(kind, 10, 1, 8)
    load_weights(model, path, kind, META, "teacher.checkpoint")
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        expected = network(x)
    assert torch.allclose(model(x), expected, atol=1e-4)
    assert sum(p.numel() for p in model.parameters()) == 0

    info = ModelInfo(role="teacher", arch=kind, num_classes=10, image_shape=(1, 8, 8), class_names=CLASSES,
                     mean=[0.5], std=[0.25])
    save_checkpoint(tmp_path / "teacher.pt", model, info)
    loaded, loaded_info = load_checkpoint(tmp_path / "teacher.pt")  # weights_only: the file travels as bytes
    assert isinstance(loaded, FileModel) and loaded_info.arch == kind
    assert torch.allclose(loaded(x), expected, atol=1e-4)


def test_a_file_of_another_kind_or_for_other_data_is_refused(files, network, tmp_path):
    onnx_path, ts_path = files
    with pytest.raises(ConfigError, match=r"teacher.onnx is an ONNX model, not a TorchScript archive"):
        load_weights(build_model("torchscript", 10, 1, 8), onnx_path, "torchscript", META, "teacher.checkpoint")
    state = tmp_path / "state.pt"
    torch.save(network.state_dict(), state)
    with pytest.raises(ConfigError, match=r"a torch.save file \(a state dict or checkpoint: set arch"):
        load_weights(build_model("onnx", 10, 1, 8), state, "onnx", META, "teacher.checkpoint")
    four = PreparedMeta("digits", CLASSES[:4], 1, 8, 8, [0.5], [0.25], {})
    with pytest.raises(DataError, match=r"gives outputs of shape \(10,\) per image; the data has 4 classes"):
        load_weights(build_model("torchscript", 4, 1, 8), ts_path, "torchscript", four, "teacher.checkpoint")
    with pytest.raises(DataError, match=r"was made for the classes"):
        load_weights(build_model("onnx", 4, 1, 8), onnx_path, "onnx", four, "teacher.checkpoint")
    other_stats = tmp_path / "other.onnx"
    export_onnx(network, _info(mean=(0.1,)), other_stats, opset=18)
    with pytest.raises(DataError, match=r"expects inputs normalised with mean \[0.1\]"):
        load_weights(build_model("onnx", 10, 1, 8), other_stats, "onnx", META, "teacher.checkpoint")
    rgb = PreparedMeta("cifar", CLASSES, 3, 8, 8, [0.5] * 3, [0.25] * 3, {})
    with pytest.raises(DataError, match=r"does not run on a batch of \(3, 8, 8\) images"):
        load_weights(build_model("torchscript", 10, 3, 8), ts_path, "torchscript", rgb, "teacher.checkpoint")


def test_a_model_file_is_imported_never_trained():
    RoleConfig(arch="onnx", epochs=0, checkpoint="models/imported/t.onnx")
    with pytest.raises(ValidationError, match="arch onnx: the checkpoint file is the network"):
        RoleConfig(arch="onnx", epochs=3, checkpoint="models/imported/t.onnx")


def test_feature_methods_refuse_a_model_file_teacher(files):
    teacher = build_model("onnx", 10, 1, 8)
    load_weights(teacher, files[0], "onnx", META, "teacher.checkpoint")
    context = MethodContext(where="distill", input_shape=(1, 8, 8), teacher_arch="onnx",
                            student_arch="resnet8")
    build_method("kd", build_model("resnet8", 10, 1, 8), teacher, context=context)  # logits only: fine
    with pytest.raises(ConfigError, match=r"distill.method: 'at' reads the teacher's features, and the teacher is an "
                                          r"imported onnx file"):
        build_method("at", build_model("resnet8", 10, 1, 8), teacher, context=context)
