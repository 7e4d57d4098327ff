"""A role's checkpoint (``models.imported``): safe reading, clear refusals naming the key."""

import pytest
import torch

from kdpipe.config import parse_params
from kdpipe.data.prepared import PreparedMeta
from kdpipe.errors import ConfigError, DataError, MissingInputError
from kdpipe.models.checkpoint import ModelInfo, save_checkpoint
from kdpipe.models.imported import load_weights
from kdpipe.models.registry import build_model

from conftest import tiny_params

CLASSES = ["a", "b", "c"]
META = PreparedMeta(dataset="test", class_names=CLASSES, channels=1, height=8, width=8, mean=[0.5], std=[0.25],
                    counts={"train": 3, "val": 3, "test": 3})
WHERE = "teacher.checkpoint"


def net(arch="resnet8", classes=3):
    torch.manual_seed(1)
    return build_model(arch, classes, 1, 8)


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_a_kdpipe_checkpoint_and_plain_state_dicts_load(tmp_path):
    source = net()
    info = ModelInfo(role="teacher", arch="resnet8", num_classes=3, image_shape=(1, 8, 8), class_names=CLASSES,
                     mean=[0.5], std=[0.25])
    save_checkpoint(tmp_path / "kdpipe.pt", source, info)
    torch.save(source.state_dict(), tmp_path / "plain.pt")
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "ddp.pt")
    for name in ("kdpipe.pt", "plain.pt", "ddp.pt"):
        target = build_model("resnet8", 3, 1, 8)
        load_weights(target, tmp_path / name, "resnet8", META, WHERE)
        assert same_weights(source, target), name


def test_mismatches_are_named(tmp_path):
    info = ModelInfo(role="teacher", arch="resnet8", num_classes=3, image_shape=(1, 8, 8), class_names=["x", "y", "z"],
                     mean=[0.5], std=[0.25])
    save_checkpoint(tmp_path / "other_classes.pt", net(), info)
    with pytest.raises(DataError, match=r"teacher.checkpoint: .* was trained on the classes x, y, z, the data has a, b, c"):
        load_weights(net(), tmp_path / "other_classes.pt", "resnet8", META, WHERE)
    with pytest.raises(ConfigError, match=r"holds a resnet8, but the role's arch is resnet14"):
        load_weights(net("resnet14"), tmp_path / "other_classes.pt", "resnet14", META, WHERE)
    torch.save(net(classes=10).state_dict(), tmp_path / "ten.pt")
    with pytest.raises(ConfigError, match=r"does not fit resnet8 for 3 classes at \(1, 8, 8\); other shapes: "
                                          r"fc.weight \(10, 64\) \(needs \(3, 64\)\)"):
        load_weights(net(), tmp_path / "ten.pt", "resnet8", META, WHERE)
    torch.save(net("resnet14").state_dict(), tmp_path / "r14.pt")
    with pytest.raises(ConfigError, match=r"unexpected: layer1.1.conv1.weight"):
        load_weights(net(), tmp_path / "r14.pt", "resnet8", META, WHERE)
    with pytest.raises(MissingInputError, match=r"teacher.checkpoint: .*nope.pt not found; put the file under models/imported/"):
        load_weights(net(), tmp_path / "nope.pt", "resnet8", META, WHERE)


def test_a_pickled_model_is_never_unpickled(tmp_path):
    """A whole pickled model could run any code: refused, without advising weights_only=False."""
    torch.save(net(), tmp_path / "whole.pt")
    with pytest.raises(ConfigError) as err:
        load_weights(net(), tmp_path / "whole.pt", "resnet8", META, WHERE)
    message = str(err.value)
    assert "never unpickles" in message and "state_dict" in message and "weights_only=False" not in message
    (tmp_path / "junk.pt").write_bytes(b"not a model")
    with pytest.raises(ConfigError, match="cannot be read as tensors alone"):
        load_weights(net(), tmp_path / "junk.pt", "resnet8", META, WHERE)


@pytest.mark.parametrize("overrides, message", [
    ({"teacher.epochs": 0}, r"teacher: epochs 0 imports a model: set checkpoint to its file"),
    ({"teacher.checkpoint": "elsewhere/t.pt"}, r"teacher: checkpoint elsewhere/t.pt must sit under models/imported/"),
])
def test_import_params_are_checked(overrides, message):
    with pytest.raises(ConfigError, match=message):
        parse_params(tiny_params(**overrides))
    ok = parse_params(tiny_params(**{"teacher.epochs": 0, "teacher.checkpoint": "models/imported/t.pt"}))
    assert ok.teacher.epochs == 0
