"""When static int8 loses more than quantize.max_drop: the other calibrations are measured and
the stage says which setting recovers the accuracy."""

import sys

import numpy as np
import pytest
import torch

from conftest import ROOT, run

from kdpipe.config import QuantizeConfig
from kdpipe.models.checkpoint import ModelInfo
from kdpipe.models.registry import build_model
from kdpipe.onnx_export import check_parity, export_onnx
from kdpipe.quantize import ArrayCalibrationReader, NormalisedSplit, calibration_trials, onnx_accuracy, recovery_advice


def test_the_advice_names_the_calibration_or_the_qat_file_that_recovers():
    cfg = QuantizeConfig(calibration_method="minmax", max_drop=0.005)
    acc = {"fp32": 0.90, "int8": 0.80, "qat_int8": 0.85}
    assert recovery_advice(acc, {"entropy": 0.897, "percentile": 0.88}, cfg).startswith(
        "quantize.calibration_method=entropy recovers it (entropy 89.70%, percentile 88.00%)")
    acc["qat_int8"] = 0.899
    assert "the QAT file does (89.90%)" in recovery_advice(acc, {"entropy": 0.85, "percentile": 0.86}, cfg)
    acc["qat_int8"] = 0.7
    assert "neither another calibration" in recovery_advice(acc, {"entropy": 0.85, "percentile": 0.86}, cfg)


def test_trials_quantize_with_each_other_method(tmp_path):
    torch.manual_seed(0)
    model = build_model("resnet8", 3, 1, 8).eval()
    info = ModelInfo(role="student", arch="resnet8", num_classes=3, image_shape=(1, 8, 8), class_names=list("abc"),
                     mean=[0.0], std=[1.0])
    export_onnx(model, info, tmp_path / "fp32.onnx", opset=18)
    # 44 images: no batch of 32 covers them evenly (a short last batch failed the histogram methods)
    x = np.random.default_rng(0).normal(size=(44, 1, 8, 8)).astype(np.float32)
    y = np.random.default_rng(1).integers(0, 3, 44)
    trials = calibration_trials(tmp_path / "fp32.onnx", x, QuantizeConfig(calibration_method="minmax"), x, y)
    assert set(trials) == {"entropy", "percentile"} and all(0 <= a <= 1 for a in trials.values())


def test_calibration_batches_are_one_size_and_cover_every_image():
    for count, size in ((44, 22), (64, 32), (31, 31), (37, 1)):
        reader = ArrayCalibrationReader("input", np.zeros((count, 1, 2, 2), np.float32))
        shapes = {b["input"].shape[0] for b in iter(reader.get_next, None)}
        assert shapes == {size} and len(reader.batches) * size == count


def test_a_split_is_normalised_a_slice_at_a_time_with_the_same_results(tmp_path):
    """The stage scores a lazily normalised split: same floats, same parity and accuracy as the whole
    float copy it no longer makes."""
    from kdpipe.data.batches import BatchTransform
    from kdpipe.data.prepared import PreparedMeta

    torch.manual_seed(0)
    model = build_model("resnet8", 3, 1, 8).eval()
    info = ModelInfo(role="student", arch="resnet8", num_classes=3, image_shape=(1, 8, 8), class_names=list("abc"),
                     mean=[0.4], std=[0.2])
    export_onnx(model, info, tmp_path / "fp32.onnx", opset=18)
    images = torch.randint(0, 256, (300, 1, 8, 8), dtype=torch.uint8)
    labels = np.random.default_rng(1).integers(0, 3, 300)
    transform = BatchTransform(PreparedMeta("t", list("abc"), 1, 8, 8, [0.4], [0.2], {}), torch.device("cpu"), False)
    whole = transform(images)
    lazy = NormalisedSplit(images, transform)
    assert len(lazy) == 300 and np.array_equal(lazy[250:300], whole[250:].numpy())
    assert onnx_accuracy(tmp_path / "fp32.onnx", lazy, labels) == onnx_accuracy(tmp_path / "fp32.onnx", whole.numpy(), labels)
    assert check_parity(model, tmp_path / "fp32.onnx", lazy, atol=1e-4) <= 1e-4


@pytest.mark.integration
def test_the_calibration_benchmark_compares_every_method(reproduced):
    proc = run([sys.executable, str(ROOT / "benchmarks/calibration.py"), "--checkpoint", "models/student.pt",
                "--prepared", "data/prepared", "--samples", "64"], reproduced)
    rows = [line.split()[:3] for line in proc.stdout.splitlines() if line.startswith(("fp32", "int8"))]
    assert [r[0] if r[0] == "fp32" else r[1] for r in rows] == ["fp32", "minmax", "entropy", "percentile"]
    assert all(row[-1].endswith("%") for row in rows)
