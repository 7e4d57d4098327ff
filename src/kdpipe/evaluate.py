"""The evaluate stage: every model of the chain on the test split, plus size and CPU latency."""

from __future__ import annotations

import csv
import logging
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import numpy as np
import onnx
import torch
from sklearn.metrics import f1_score, log_loss

from kdpipe import paths
from kdpipe.config import EvaluateConfig, Params
from kdpipe.data.batches import BatchTransform
from kdpipe.data.prepared import load_prepared
from kdpipe.engine.inference import predict_logits
from kdpipe.errors import MissingInputError
from kdpipe.io import atomic_path, write_json
from kdpipe.models.checkpoint import load_checkpoint
from kdpipe.models.registry import count_parameters
from kdpipe.onnx_export import onnx_logits, ort_session

log = logging.getLogger("kdpipe")
TORCH_MODELS = ("teacher", "assistant", "student")
ONNX_MODELS = {"student_onnx": paths.STUDENT_ONNX, "student_int8": paths.STUDENT_INT8_ONNX}
PLOTS_DIR = paths.PLOTS_DIR / "evaluate"


def median_latency_ms(run: Callable[[], object], warmup: int, runs: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def torch_latency_ms(model: torch.nn.Module, x: torch.Tensor, cfg: EvaluateConfig) -> float:
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.latency_threads)
    try:
        with torch.inference_mode():
            return median_latency_ms(lambda: model(x), cfg.latency_warmup, cfg.latency_runs)
    finally:
        torch.set_num_threads(threads)


def onnx_params(path: Path) -> int:
    """Weights stored in the graph (quantized or not), not counting scales and zero points."""
    model = onnx.load(str(path))
    return int(sum(np.prod(t.dims) for t in model.graph.initializer if len(t.dims) > 1 or "bias" in t.name))


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


def evaluate_all(params: Params) -> dict[str, dict]:
    cfg = params.evaluate
    data = load_prepared(paths.PREPARED_DIR, splits=("test",))
    test = data["test"]
    names = data.meta.class_names
    transform = BatchTransform(data.meta, torch.device("cpu"), channels_last=False)
    labels = test.labels.numpy()
    x_test = transform(test.images)
    one = x_test[:1].contiguous()
    results: dict[str, dict] = {}
    for role in TORCH_MODELS:
        path = paths.checkpoint_path(role)
        model, info = load_checkpoint(path, paths.STAGE_OF_ROLE[role])
        if info.class_names != names:
            raise_mismatch(path)
        logits = predict_logits(model, test, transform, params.train.eval_batch_size).numpy()
        results[role] = {
            "arch": info.arch,
            **classification_metrics(logits, labels, len(names)),
            "params": count_parameters(model),
            "size_mb": round(path.stat().st_size / 1e6, 4),
            "latency_ms": round(torch_latency_ms(model, one, cfg), 4),
        }
        write_predictions(role, logits.argmax(1), labels, names)
    for name, path in ONNX_MODELS.items():
        if not path.is_file():
            raise MissingInputError(f"{path} not found: run `dvc repro quantize` first")
        logits = onnx_logits(ort_session(path), x_test.numpy())
        session = ort_session(path, threads=cfg.latency_threads)
        feed = {session.get_inputs()[0].name: one.numpy()}
        results[name] = {
            "arch": results["student"]["arch"],
            **classification_metrics(logits, labels, len(names)),
            "params": onnx_params(path),
            "size_mb": round(path.stat().st_size / 1e6, 4),
            "latency_ms": round(median_latency_ms(partial(session.run, None, feed), cfg.latency_warmup, cfg.latency_runs), 4),
        }
        write_predictions(name, logits.argmax(1), labels, names)
    teacher = results["teacher"]
    for name, row in results.items():
        row["compression_vs_teacher"] = round(teacher["size_mb"] / row["size_mb"], 3)
        row["speedup_vs_teacher"] = round(teacher["latency_ms"] / row["latency_ms"], 3)
        row["latency_threads"] = cfg.latency_threads
    return results


def raise_mismatch(path: Path) -> None:
    raise MissingInputError(f"{path} was trained on other classes than the prepared test split: re-run `dvc repro`")


def write_model_table(results: dict[str, dict]) -> None:
    with atomic_path(PLOTS_DIR / "models.csv") as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["model", "accuracy", "size_mb", "latency_ms"])
        for name, row in results.items():
            if "accuracy" in row:
                writer.writerow([name, row["accuracy"], row["size_mb"], row["latency_ms"]])


def run_evaluate(params: Params) -> None:
    results = evaluate_all(params)
    write_model_table(results)
    write_json(paths.EVALUATE_METRICS, results)
    for name, row in results.items():
        if "accuracy" in row:
            log.info("%-13s acc %.4f  %8.3f MB  %7.3f ms", name, row["accuracy"], row["size_mb"], row["latency_ms"])
