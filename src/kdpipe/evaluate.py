"""The evaluate stage: every model of the chain and every deployable file, on every split.

``metrics/evaluate.json`` is the summary a person scans; ``metrics/evaluate_detail.json`` holds the
test split with size, parameters, MACs, batch-1 CPU latency and batched throughput;
``metrics/evaluate_splits.json`` the other splits of ``evaluate.splits``. ``data/eval_outputs/``
keeps what the figures stage draws from (kdpipe.figures): every model's test logits and the
feature maps of a few test images. Drawing is a stage of its own so that this one, which loads
and times every model, comes back from DVC's run-cache.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch

from kdpipe import paths
from kdpipe.config import EvaluateConfig, Params
from kdpipe.data.prepared import load_prepared
from kdpipe.errors import MissingInputError
from kdpipe.eval_outputs import EvalOutputs, FeatureMaps, save_eval_outputs
from kdpipe.io import write_json
from kdpipe.measure import median_latency_ms, throughput
from kdpipe.methods.common.features import FeatureTap, default_stages
from kdpipe.metrics import classification_metrics
from kdpipe.model_file import ModelFile, normalise, open_model
from kdpipe.models import MODEL_FILE_ARCHS
from kdpipe.models.registry import count_macs

log = logging.getLogger("kdpipe")
# metrics/evaluate.json key -> (file, the stage that writes it)
MODEL_FILES: dict[str, tuple[Path, str]] = {
    "teacher": (paths.checkpoint_path("teacher"), "train_teacher"),
    "assistant": (paths.checkpoint_path("assistant"), "train_assistant"),
    "student": (paths.checkpoint_path("student"), "distill_student"),
    paths.TWIN: (paths.checkpoint_path(paths.TWIN), "train_twin"),
    "student_onnx": (paths.STUDENT_ONNX, "quantize"),
    "student_int8": (paths.STUDENT_INT8_ONNX, "quantize"),
    "student_dynamic_int8": (paths.STUDENT_DYNAMIC_INT8_ONNX, "quantize"),
    "student_qat": (paths.STUDENT_QAT_INT8_ONNX, "quantize"),
}
CHANNELS_SHOWN = 8  # feature maps: the most active channels of a layer


def models_evaluated(params: Params) -> dict[str, tuple[Path, str]]:
    """The assistant only where it teaches the student (a pipeline without the chain has none)."""
    return {k: v for k, v in MODEL_FILES.items() if k != "assistant" or params.distill.teacher == "assistant"}


def speed(model: ModelFile, images: np.ndarray, cfg: EvaluateConfig) -> dict:
    """Size, parameters, batch-1 latency and batched throughput with ``cfg.latency_threads`` threads."""
    x = normalise(images[: cfg.throughput_batch], model.mean, model.std)
    batch = np.resize(x, (cfg.throughput_batch, *x.shape[1:]))  # repeats images if the split is small
    with model.predictor(cfg.latency_threads) as run:
        latency = median_latency_ms(run, x[:1], cfg.latency_warmup, cfg.latency_runs, cfg.timing_budget_s)
        images_per_second = throughput(run, batch, min(cfg.latency_warmup, 3), cfg.throughput_runs, cfg.timing_budget_s)
    return {
        "params": model.params,
        "size_mb": model.size_mb,
        "latency_ms": round(latency, 4),
        f"throughput_b{cfg.throughput_batch}": round(images_per_second, 1),
    }


def evaluate_all(params: Params) -> tuple[dict[str, dict[str, dict]], EvalOutputs]:
    """{split: {model: row}} for every split in ``evaluate.splits`` (and test), and what the
    figures are drawn from."""
    cfg = params.evaluate
    splits = sorted(set(cfg.splits) | {"test"}, key=("train", "val", "test").index)
    data = load_prepared(paths.PREPARED_DIR, splits=tuple(splits))
    meta = data.meta
    images = {s: data[s].images.numpy() for s in splits}  # uint8, memory-mapped: read a batch at a time
    results: dict[str, dict[str, dict]] = {s: {} for s in splits}
    teacher_logits: dict[str, np.ndarray] = {}
    macs: dict[str, int] = {}
    test_logits: dict[str, np.ndarray] = {}
    feature_maps: dict[str, dict[str, FeatureMaps]] = {}
    shown = pick_images(data["test"].labels.numpy(), cfg.feature_map_images)
    models = models_evaluated(params)
    for number, (name, (path, stage)) in enumerate(models.items(), 1):
        started = time.perf_counter()
        log.info("evaluate %d/%d: %s (%s) on %s", number, len(models), name, path,
                 ", ".join(f"{s} ({len(data[s])} images)" for s in splits))
        model = open_model(path, stage)
        if model.class_names != meta.class_names or tuple(model.image_shape) != meta.image_shape:
            raise MissingInputError(f"{path} was made for other data than the prepared splits: re-run `dvc repro`")
        for split in splits:
            labels = data[split].labels.numpy()
            logits = model.logits(images[split], params.train.eval_batch_size)
            if name == "teacher":
                teacher_logits[split] = logits
            row = {
                "arch": model.arch,
                "runtime": model.runtime,
                **classification_metrics(logits, labels, meta.num_classes, cfg.topk, cfg.ece_bins,
                                         None if name == "teacher" else teacher_logits[split]),
            }
            if split == "test":
                test_logits[name] = logits
                if model.model is not None:  # (an imported ONNX/TorchScript teacher: not countable here)
                    macs[name] = None if model.arch in MODEL_FILE_ARCHS else count_macs(model.model, meta.image_shape)
                # ONNX files hold the student's graph (BN folded): its multiply-accumulates
                row["macs"] = macs[name] if name in macs else macs["student"]
                if cfg.flip_tta:
                    row["accuracy_flip_tta"] = flip_tta_accuracy(model, images["test"], logits, labels,
                                                                 params.train.eval_batch_size)
                row.update(speed(model, images["test"], cfg))
            results[split][name] = row
        log.info("evaluate %d/%d: %s done in %.1fs", number, len(models), name, time.perf_counter() - started)
        if model.model is not None and model.arch not in MODEL_FILE_ARCHS:  # a model file has no layers to tap
            feature_maps[name] = capture_feature_maps(
                model.model, model.arch, normalise(images["test"][shown], model.mean, model.std))
    test = results["test"]
    teacher, student = test["teacher"], test["student"]
    for row in test.values():
        row["compression_vs_teacher"] = round(teacher["size_mb"] / row["size_mb"], 3)
        row["speedup_vs_teacher"] = round(teacher["latency_ms"] / row["latency_ms"], 3)
        row["speedup_vs_student"] = round(student["latency_ms"] / row["latency_ms"], 3)
        row["latency_threads"] = cfg.latency_threads
    test_split = data["test"]
    outputs = EvalOutputs(
        class_names=list(meta.class_names),
        labels=test_split.labels.numpy(),
        logits=test_logits,
        images=images["test"][shown],
        captions=[meta.class_names[int(test_split.labels[i])] for i in shown],
        feature_maps=feature_maps,
    )
    return results, outputs


def flip_tta_accuracy(model: ModelFile, images: np.ndarray, logits: np.ndarray, labels: np.ndarray,
                      batch_size: int) -> float:
    """Accuracy of the logits averaged over each image and its mirror image (airbench's flip TTA)."""
    mirrored = model.logits(images, batch_size, mirrored=True)
    return round(float(((logits + mirrored).argmax(1) == labels).mean()), 6)


def pick_images(labels: np.ndarray, count: int) -> np.ndarray:
    """Indices of the first image of each class, in class order, then further images: fixed
    across runs and models, and spread over the classes."""
    firsts = [int(np.flatnonzero(labels == c)[0]) for c in np.unique(labels)]
    rest = [i for i in range(len(labels)) if i not in set(firsts)]
    return np.array((firsts + rest)[:count])


@torch.no_grad()
def capture_feature_maps(model: torch.nn.Module, arch: str, x: np.ndarray) -> dict[str, FeatureMaps]:
    """The early and the middle stage's activations on ``x``, for the channels most active over
    these images (stage 2 of 4: still spatial on 8-px inputs)."""
    stages = default_stages(arch)
    layers = {"early": stages[0], "middle": stages[1]}
    tap = FeatureTap(model, list(layers.values()), where=f"feature maps of {arch}")
    try:
        model.eval()(torch.from_numpy(x))
        outputs = {label: tap.outputs[layer].float().numpy() for label, layer in layers.items()}
    finally:
        tap.remove()
    captured = {}
    for label, maps in outputs.items():
        top = np.argsort(-maps.mean(axis=(0, 2, 3)), kind="stable")[:CHANNELS_SHOWN]
        captured[label] = FeatureMaps(layer=layers[label], channels=[int(c) for c in top], maps=maps[:, top])
    return captured


# What a person scans across experiments (``dvc exp show``: five columns a model, six with
# evaluate.flip_tta); the rest of each row is in metrics/evaluate_detail.json and
# metrics/evaluate_splits.json.
SUMMARY_KEYS = ("accuracy", "accuracy_flip_tta", "f1_macro", "ece", "size_mb", "latency_ms")


def summary(rows: dict[str, dict]) -> dict[str, dict]:
    return {name: {k: row[k] for k in SUMMARY_KEYS if k in row} for name, row in rows.items()}


def run_evaluate(params: Params) -> None:
    results, outputs = evaluate_all(params)
    save_eval_outputs(outputs)
    write_json(paths.EVALUATE_METRICS, summary(results["test"]))
    write_json(paths.EVALUATE_DETAIL, results["test"])
    write_json(paths.EVALUATE_SPLITS_METRICS, {s: rows for s, rows in results.items() if s != "test"})
    for name, row in results["test"].items():
        log.info("%-21s acc %.4f  ece %.4f  %8.3f MB  %7.3f ms", name, row["accuracy"], row["ece"], row["size_mb"],
                 row["latency_ms"])
