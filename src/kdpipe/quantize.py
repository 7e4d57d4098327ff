"""int8 students with ONNX Runtime: post-training static (QDQ, per-channel weights), dynamic,
and quantization-aware distilled (see ``kdpipe.qat``).

ONNX Runtime's quantizer is used because the deployable artefact is the ONNX file itself: it
calibrates and quantizes the exported graph, and the same runtime executes it, so what is
measured is what ships. (PyTorch's eager quantization is deprecated; PT2E targets other runtimes.)
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from kdpipe import paths
from kdpipe.config import Params
from kdpipe.data.batches import BatchTransform
from kdpipe.data.prepared import load_prepared
from kdpipe.io import atomic_path, write_json
from kdpipe.models.checkpoint import load_checkpoint
from kdpipe.onnx_export import check_parity, export_onnx, onnx_logits, ort_session
from kdpipe.qat import qat_distill
from kdpipe.quant_report import LAYERS_REPORT, layer_errors

log = logging.getLogger("kdpipe")

# Weights in ONNX Runtime's reduced 7-bit range, [-64, 64]. x86 CPUs without VNNI (AVX2, plain
# AVX-512) multiply uint8 activations by int8 weights with VPMADDUBSW, which adds two products into
# a saturating int16: with full-range weights, a layer whose input fills the uint8 range overflows
# there. ONNX Runtime documents this and recommends reduce_range on such CPUs; measured on an AVX2
# EPYC, the CIFAR-10 fastnet_s student's whitening stem overflowed and int8 validation accuracy fell
# from 85.5% to 36.3% (the unfused QDQ graph, ORT_ENABLE_BASIC, kept 84.8%). A deployable file must
# be right on whatever CPU it is copied to, so the range is reduced on every machine.
REDUCE_RANGE = True

REPORT_IMAGES = 256  # validation images behind the per-layer error report

CALIBRATION_METHODS = {
    "minmax": CalibrationMethod.MinMax,
    "entropy": CalibrationMethod.Entropy,
    "percentile": CalibrationMethod.Percentile,
}


class ArrayCalibrationReader(CalibrationDataReader):
    """``images`` in batches of one size (at most ``batch_size``) that covers them all: ONNX Runtime's
    histogram calibrators (entropy, percentile) stack the batches' activations, so a shorter last
    batch fails them."""

    def __init__(self, input_name: str, images: np.ndarray, batch_size: int = 32):
        self.input_name = input_name
        size = max(d for d in range(1, max(1, min(batch_size, len(images))) + 1) if len(images) % d == 0)
        self.batches = [images[i : i + size] for i in range(0, len(images), size)]
        self.pos = 0

    def get_next(self):
        if self.pos >= len(self.batches):
            return None
        self.pos += 1
        return {self.input_name: self.batches[self.pos - 1]}

    def rewind(self):
        self.pos = 0


class NormalisedSplit:
    """A split's uint8 images, normalised a slice at a time: a whole split's float copy (four times
    its bytes) never exists, so photo-sized validation splits quantize in bounded memory."""

    def __init__(self, images: torch.Tensor, transform: BatchTransform):
        self.images, self.transform = images, transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: slice) -> np.ndarray:
        if not isinstance(index, slice):
            raise TypeError("NormalisedSplit is read in batches: index it with a slice")
        return self.transform(self.images[index]).numpy()


def calibration_images(images: torch.Tensor, labels: torch.Tensor, count: int, seed: int) -> torch.Tensor:
    """A seeded subset of training images, with every class represented where possible."""
    if count >= len(labels):
        return images
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    try:
        _, picked = train_test_split(idx, test_size=count, stratify=labels.numpy(), random_state=seed)
    except ValueError:
        picked = np.random.default_rng(seed).choice(idx, size=count, replace=False)
    return images[torch.as_tensor(np.sort(picked))]


@contextlib.contextmanager
def preprocessed(fp32_path: str | Path) -> Iterator[Path]:
    """Shape inference and graph optimisation (BN folding) first, as ONNX Runtime recommends:
    done once per fp32 file, whatever is quantized from it."""
    with tempfile.TemporaryDirectory() as tmpdir:
        pre = Path(tmpdir) / "preprocessed.onnx"
        quant_pre_process(str(fp32_path), str(pre), skip_symbolic_shape=False)
        yield pre


@contextlib.contextmanager
def _int8_output(fp32_path: str | Path, int8_path: str | Path, pre: Path | None) -> Iterator[tuple[Path, Path]]:
    """(preprocessed input, temporary output); the output gets the fp32 file's metadata and
    replaces ``int8_path`` atomically."""
    with contextlib.ExitStack() as stack:
        source = pre if pre is not None else stack.enter_context(preprocessed(fp32_path))
        with atomic_path(int8_path) as tmp:
            yield source, tmp
            copy_metadata(fp32_path, tmp)


def quantize_int8(
    fp32_path: str | Path, int8_path: str | Path, calibration: np.ndarray, method: str, per_channel: bool,
    pre: Path | None = None,
) -> None:
    with _int8_output(fp32_path, int8_path, pre) as (source, tmp):
        quantize_static(
            str(source), str(tmp), ArrayCalibrationReader("input", calibration.astype(np.float32)),
            quant_format=QuantFormat.QDQ, per_channel=per_channel,
            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            calibrate_method=CALIBRATION_METHODS[method], reduce_range=REDUCE_RANGE,
            extra_options={"ActivationSymmetric": False, "WeightSymmetric": True},
        )


def copy_metadata(src: str | Path, dst: str | Path) -> None:
    source, target = onnx.load(str(src)), onnx.load(str(dst))
    known = {p.key for p in target.metadata_props}
    for prop in source.metadata_props:
        if prop.key not in known:
            target.metadata_props.add(key=prop.key, value=prop.value)
    onnx.save_model(target, str(dst))


def quantize_dynamic_int8(
    fp32_path: str | Path, int8_path: str | Path, op_types: list[str], pre: Path | None = None
) -> None:
    with _int8_output(fp32_path, int8_path, pre) as (source, tmp):
        # ConvInteger has CPU kernels for uint8 weights only.
        weight_type = QuantType.QUInt8 if "Conv" in op_types else QuantType.QInt8
        quantize_dynamic(str(source), str(tmp), op_types_to_quantize=list(op_types), weight_type=weight_type)


def onnx_accuracy(path: Path, x: np.ndarray | NormalisedSplit, y: np.ndarray) -> float:
    return round(float((onnx_logits(ort_session(path), x).argmax(1) == y).mean()), 6)


def calibration_trials(
    fp32_path: Path, calib: np.ndarray, cfg, val_x: np.ndarray | NormalisedSplit, val_y: np.ndarray
) -> dict[str, float]:
    """Validation accuracy of static int8 with each other calibration method (same images)."""
    trials = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in CALIBRATION_METHODS:
            if method != cfg.calibration_method:
                path = Path(tmp) / f"{method}.onnx"
                quantize_int8(fp32_path, path, calib, method, cfg.per_channel)
                trials[method] = onnx_accuracy(path, val_x, val_y)
    return trials


def recovery_advice(acc: dict[str, float], trials: dict[str, float], cfg) -> str:
    """What the log says when static int8 loses more than ``quantize.max_drop``."""
    best = max(trials, key=trials.get)
    tried = ", ".join(f"{m} {100 * a:.2f}%" for m, a in trials.items())
    if acc["fp32"] - trials[best] <= cfg.max_drop:
        return f"quantize.calibration_method={best} recovers it ({tried})"
    if acc["fp32"] - acc["qat_int8"] <= cfg.max_drop:
        return f"no calibration recovers it ({tried}); the QAT file does ({100 * acc['qat_int8']:.2f}%)"
    return (f"neither another calibration ({tried}) nor QAT ({100 * acc['qat_int8']:.2f}%) recovers it: try more "
            "quantize.qat.epochs, quantize.calibration_samples, or per-layer exclusions from the report")


def quantize_student(params: Params) -> None:
    """The quantize stage: export the student and check it; post-training static and dynamic int8;
    quantization-aware distillation then int8; record what was checked."""
    cfg = params.quantize
    model, info = load_checkpoint(paths.checkpoint_path("student"), paths.STAGE_OF_ROLE["student"])
    data = load_prepared(paths.PREPARED_DIR, splits=("train", "val"))
    transform = BatchTransform(data.meta, torch.device("cpu"), channels_last=False)
    val_x = NormalisedSplit(data["val"].images, transform)

    export_onnx(model, info, paths.STUDENT_ONNX, cfg.opset)
    max_diff = check_parity(model, paths.STUDENT_ONNX, val_x, cfg.atol)
    log.info("exported %s (max |logit diff| vs PyTorch %.2e)", paths.STUDENT_ONNX, max_diff)

    train = data["train"]
    calib = transform(calibration_images(train.images, train.labels, cfg.calibration_samples, params.seed)).numpy()
    with preprocessed(paths.STUDENT_ONNX) as pre:
        quantize_int8(paths.STUDENT_ONNX, paths.STUDENT_INT8_ONNX, calib, cfg.calibration_method, cfg.per_channel, pre)
        quantize_dynamic_int8(paths.STUDENT_ONNX, paths.STUDENT_DYNAMIC_INT8_ONNX, cfg.dynamic_op_types, pre)

    report_x = val_x[:REPORT_IMAGES]
    layers = {"int8": layer_errors(paths.STUDENT_ONNX, paths.STUDENT_INT8_ONNX, report_x)}

    qat_model, qat_result = qat_distill(params, model, data)
    with tempfile.TemporaryDirectory() as tmpdir:
        qat_fp32 = Path(tmpdir) / "student_qat.onnx"
        export_onnx(qat_model, info, qat_fp32, cfg.opset)
        qat_diff = check_parity(qat_model, qat_fp32, val_x, cfg.atol)
        quantize_int8(qat_fp32, paths.STUDENT_QAT_INT8_ONNX, calib, cfg.calibration_method, cfg.per_channel)
        # against the fine-tuned fp32 model it was quantized from
        layers["qat_int8"] = layer_errors(qat_fp32, paths.STUDENT_QAT_INT8_ONNX, report_x)
    write_json(LAYERS_REPORT, layers)

    val_y = data["val"].labels.numpy()
    files = {
        "fp32": paths.STUDENT_ONNX,
        "int8": paths.STUDENT_INT8_ONNX,
        "dynamic_int8": paths.STUDENT_DYNAMIC_INT8_ONNX,
        "qat_int8": paths.STUDENT_QAT_INT8_ONNX,
    }
    acc = {name: onnx_accuracy(path, val_x, val_y) for name, path in files.items()}  # (normalised again per file: cheap)
    trials = {}
    if acc["fp32"] - acc["int8"] > cfg.max_drop:
        trials = calibration_trials(paths.STUDENT_ONNX, calib, cfg, val_x, val_y)
    write_json(
        paths.QUANTIZE_METRICS,
        {
            "onnx_max_abs_diff": max_diff,
            "onnx_atol": cfg.atol,
            "opset": cfg.opset,
            "calibration_samples": len(calib),
            "calibration_method": cfg.calibration_method,
            "per_channel": cfg.per_channel,
            "reduce_range": REDUCE_RANGE,
            **{f"val_accuracy_{name}": value for name, value in acc.items()},
            **{f"size_mb_{name}": round(path.stat().st_size / 1e6, 4) for name, path in files.items()},
            "qat_epochs": cfg.qat.epochs,
            "qat_best_epoch": qat_result.best_epoch,
            "qat_val_accuracy_simulated": round(qat_result.best_val_accuracy, 6),
            "qat_onnx_max_abs_diff": qat_diff,
            "dynamic_op_types": list(cfg.dynamic_op_types),
            **({"calibration_trials": trials} if trials else {}),  # only when int8 lost more than max_drop
        },
    )
    log.info(
        "val accuracy: fp32 %.4f, int8 %.4f, dynamic int8 %.4f, QAT int8 %.4f",
        acc["fp32"], acc["int8"], acc["dynamic_int8"], acc["qat_int8"],
    )
    if trials:
        log.warning("int8 (%s calibration) loses %.1f points (> quantize.max_drop=%g): %s", cfg.calibration_method,
                    100 * (acc["fp32"] - acc["int8"]), cfg.max_drop, recovery_advice(acc, trials, cfg))
    for name, report in layers.items():
        if acc["fp32"] - acc[name] > cfg.max_drop:
            worst = report["weights"][0]  # (sorted worst first)
            log.warning(
                "%s loses %.1f points of validation accuracy: logits SQNR %s dB as shipped, %s dB in the QDQ "
                "graph; worst weight %s (%s dB); per-layer figures in %s (python -m kdpipe.quant_report)",
                name, 100 * (acc["fp32"] - acc[name]), report["logits"]["shipped_sqnr_db"],
                report["logits"]["qdq_graph_sqnr_db"], worst["tensor"], worst["sqnr_db"], LAYERS_REPORT,
            )
