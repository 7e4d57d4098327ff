"""The evaluate stage: every model of the chain and every deployable file on the test split,
with size, parameters, batch-1 CPU latency and batched throughput."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import f1_score, log_loss

from kdpipe import paths
from kdpipe.config import EvaluateConfig, Params
from kdpipe.data.prepared import load_prepared
from kdpipe.errors import MissingInputError
from kdpipe.io import atomic_path, write_json
from kdpipe.measure import median_latency_ms, throughput
from kdpipe.model_file import ModelFile, normalise, open_model

log = logging.getLogger("kdpipe")
# metrics/evaluate.json key -> (file, the stage that writes it)
MODEL_FILES: dict[str, tuple[Path, str]] = {
    "teacher": (paths.checkpoint_path("teacher"), "train_teacher"),
    "assistant": (paths.checkpoint_path("assistant"), "train_assistant"),
    "student": (paths.checkpoint_path("student"), "distill_student"),
    "student_onnx": (paths.STUDENT_ONNX, "quantize"),
    "student_int8": (paths.STUDENT_INT8_ONNX, "quantize"),
    "student_dynamic_int8": (paths.STUDENT_DYNAMIC_INT8_ONNX, "quantize"),
    "student_qat": (paths.STUDENT_QAT_INT8_ONNX, "quantize"),
}
PLOTS_DIR = paths.PLOTS_DIR / "evaluate"


def classification_metrics(logits: np.ndarray, labels: np.ndarray, num_classes: int) -> dict[str, float]:
    probs = torch.softmax(torch.from_numpy(logits).double(), dim=1).numpy()
    pred = logits.argmax(1)
    return {
        "accuracy": round(float((pred == labels).mean()), 6),
        "f1_macro": round(float(f1_score(labels, pred, average="macro", zero_division=0)), 6),
        "nll": round(float(log_loss(labels, probs, labels=list(range(num_classes)))), 6),
    }


def write_predictions(name: str, pred: np.ndarray, labels: np.ndarray, class_names: list[str]) -> None:
    with atomic_path(PLOTS_DIR / f"predictions_{name}.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["actual", "predicted"])
        writer.writerows((class_names[a], class_names[p]) for a, p in zip(labels, pred))


def score_model(
    model: ModelFile, x: np.ndarray, labels: np.ndarray, num_classes: int, cfg: EvaluateConfig, eval_batch_size: int
) -> tuple[dict, np.ndarray]:
    """Accuracy and friends on (x, labels), size, parameters, batch-1 latency and batched throughput
    with ``cfg.latency_threads`` threads. Returns the row and the logits."""
    logits = model.logits(x, eval_batch_size)
    batch = np.resize(x, (cfg.throughput_batch, *x.shape[1:]))  # repeats images if the split is small
    with model.predictor(cfg.latency_threads) as run:
        latency = median_latency_ms(run, x[:1], cfg.latency_warmup, cfg.latency_runs)
        images_per_second = throughput(run, batch, min(cfg.latency_warmup, 3), cfg.throughput_runs)
    row = {
        "arch": model.arch,
        "runtime": model.runtime,
        **classification_metrics(logits, labels, num_classes),
        "params": model.params,
        "size_mb": model.size_mb,
        "latency_ms": round(latency, 4),
        f"throughput_b{cfg.throughput_batch}": round(images_per_second, 1),
    }
    return row, logits


def evaluate_all(params: Params) -> dict[str, dict]:
    cfg = params.evaluate
    data = load_prepared(paths.PREPARED_DIR, splits=("test",))
    meta, test = data.meta, data["test"]
    labels = test.labels.numpy()
    x_test = normalise(test.images.numpy(), meta.mean, meta.std)
    results: dict[str, dict] = {}
    for name, (path, stage) in MODEL_FILES.items():
        model = open_model(path, stage)
        if model.class_names != meta.class_names or tuple(model.image_shape) != meta.image_shape:
            raise MissingInputError(f"{path} was made for other data than the prepared test split: re-run `dvc repro`")
        results[name], logits = score_model(model, x_test, labels, meta.num_classes, cfg, params.train.eval_batch_size)
        write_predictions(name, logits.argmax(1), labels, meta.class_names)
    teacher, student = results["teacher"], results["student"]
    for row in results.values():
        row["compression_vs_teacher"] = round(teacher["size_mb"] / row["size_mb"], 3)
        row["speedup_vs_teacher"] = round(teacher["latency_ms"] / row["latency_ms"], 3)
        row["speedup_vs_student"] = round(student["latency_ms"] / row["latency_ms"], 3)
        row["latency_threads"] = cfg.latency_threads
    return results


def write_model_table(results: dict[str, dict], batch: int) -> None:
    with atomic_path(PLOTS_DIR / "models.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "accuracy", "size_mb", "latency_ms", "throughput"])
        for name, row in results.items():
            writer.writerow([name, row["accuracy"], row["size_mb"], row["latency_ms"], row[f"throughput_b{batch}"]])


def run_evaluate(params: Params) -> None:
    results = evaluate_all(params)
    write_model_table(results, params.evaluate.throughput_batch)
    write_json(paths.EVALUATE_METRICS, results)
    for name, row in results.items():
        log.info("%-21s acc %.4f  %8.3f MB  %7.3f ms", name, row["accuracy"], row["size_mb"], row["latency_ms"])
