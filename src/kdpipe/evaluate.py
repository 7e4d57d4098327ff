"""The evaluate stage: every model of the chain and every deployable file, on every split.

``metrics/evaluate.json`` holds the test split with size, parameters, MACs, batch-1 CPU latency
and batched throughput; ``metrics/evaluate_splits.json`` the other splits of ``evaluate.splits``. ``plots/evaluate/``
holds what the top-level plots draw: the model table (bar and Pareto plots), predictions
(confusion), per-class accuracy, reliability diagrams, top-k curves, classification reports,
seaborn confusion heatmaps and feature-map images.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np

from kdpipe import figures, paths
from kdpipe.config import EvaluateConfig, Params
from kdpipe.data.prepared import PreparedData, load_prepared
from kdpipe.errors import MissingInputError
from kdpipe.io import atomic_path, write_json
from kdpipe.measure import median_latency_ms, throughput
from kdpipe.metrics import classification_metrics, per_class_accuracy, reliability, report, topk_curve
from kdpipe.model_file import ModelFile, normalise, open_model
from kdpipe.models.registry import count_macs

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


def speed(model: ModelFile, x: np.ndarray, cfg: EvaluateConfig) -> dict:
    """Size, parameters, batch-1 latency and batched throughput with ``cfg.latency_threads`` threads."""
    batch = np.resize(x, (cfg.throughput_batch, *x.shape[1:]))  # repeats images if the split is small
    with model.predictor(cfg.latency_threads) as run:
        latency = median_latency_ms(run, x[:1], cfg.latency_warmup, cfg.latency_runs)
        images_per_second = throughput(run, batch, min(cfg.latency_warmup, 3), cfg.throughput_runs)
    return {
        "params": model.params,
        "size_mb": model.size_mb,
        "latency_ms": round(latency, 4),
        f"throughput_b{cfg.throughput_batch}": round(images_per_second, 1),
    }


def write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def write_test_plots(name: str, logits: np.ndarray, labels: np.ndarray, class_names: list[str],
                     cfg: EvaluateConfig) -> None:
    pred = logits.argmax(1)
    write_csv(PLOTS_DIR / f"predictions_{name}.csv", ["actual", "predicted"],
              [[class_names[a], class_names[p]] for a, p in zip(labels, pred)])
    per_class = per_class_accuracy(labels, pred, class_names)
    write_csv(PLOTS_DIR / "per_class" / f"{name}.csv", ["class", "accuracy"],
              [[c, a] for c, a in per_class.items() if a is not None])
    write_csv(PLOTS_DIR / "reliability" / f"{name}.csv", ["confidence", "accuracy"],
              [[b["confidence"], b["accuracy"]] for b in reliability(labels, logits, cfg.ece_bins)])
    write_csv(PLOTS_DIR / "topk" / f"{name}.csv", ["k", "accuracy"],
              [[t["k"], t["accuracy"]] for t in topk_curve(labels, logits, max(cfg.topk, 5))])
    rep = {**report(labels, pred, class_names), "per_class_accuracy": per_class}
    write_json(PLOTS_DIR / "reports" / f"{name}.json", rep)
    figures.confusion_png(rep["confusion_matrix"], class_names, f"{name} (test)", PLOTS_DIR / "confusion" / f"{name}.png")


def evaluate_all(params: Params) -> dict[str, dict[str, dict]]:
    """{split: {model: row}} for every split in ``evaluate.splits`` (and test)."""
    cfg = params.evaluate
    splits = sorted(set(cfg.splits) | {"test"}, key=("train", "val", "test").index)
    data = load_prepared(paths.PREPARED_DIR, splits=tuple(splits))
    meta = data.meta
    x = {s: normalise(data[s].images.numpy(), meta.mean, meta.std) for s in splits}
    results: dict[str, dict[str, dict]] = {s: {} for s in splits}
    teacher_logits: dict[str, np.ndarray] = {}
    macs: dict[str, int] = {}
    for name, (path, stage) in MODEL_FILES.items():
        model = open_model(path, stage)
        if model.class_names != meta.class_names or tuple(model.image_shape) != meta.image_shape:
            raise MissingInputError(f"{path} was made for other data than the prepared splits: re-run `dvc repro`")
        for split in splits:
            labels = data[split].labels.numpy()
            logits = model.logits(x[split], params.train.eval_batch_size)
            if name == "teacher":
                teacher_logits[split] = logits
            row = {
                "arch": model.arch,
                "runtime": model.runtime,
                **classification_metrics(logits, labels, meta.num_classes, cfg.topk, cfg.ece_bins,
                                         None if name == "teacher" else teacher_logits[split]),
            }
            if split == "test":
                write_test_plots(name, logits, labels, meta.class_names, cfg)
                if model.model is not None:
                    macs[name] = count_macs(model.model, meta.image_shape)
                # ONNX files hold the student's graph (BN folded): its multiply-accumulates
                row["macs"] = macs[name] if name in macs else macs["student"]
                row.update(speed(model, x["test"], cfg))
            results[split][name] = row
        if model.model is not None:
            save_feature_maps(name, model, data, x["test"], cfg)
    test = results["test"]
    teacher, student = test["teacher"], test["student"]
    for row in test.values():
        row["compression_vs_teacher"] = round(teacher["size_mb"] / row["size_mb"], 3)
        row["speedup_vs_teacher"] = round(teacher["latency_ms"] / row["latency_ms"], 3)
        row["speedup_vs_student"] = round(student["latency_ms"] / row["latency_ms"], 3)
        row["latency_threads"] = cfg.latency_threads
    return results


def save_feature_maps(name: str, model: ModelFile, data: PreparedData, x_test: np.ndarray, cfg: EvaluateConfig) -> None:
    test = data["test"]
    idx = figures.pick_images(test.labels.numpy(), cfg.feature_map_images)
    captions = [data.meta.class_names[int(test.labels[i])] for i in idx]
    figures.feature_map_pngs(model.model, model.arch, x_test[idx], test.images.numpy()[idx], captions, name,
                             PLOTS_DIR / "feature_maps")


def write_model_table(results: dict[str, dict], batch: int) -> None:
    write_csv(PLOTS_DIR / "models.csv", ["model", "accuracy", "size_mb", "latency_ms", "throughput"],
              [[n, r["accuracy"], r["size_mb"], r["latency_ms"], r[f"throughput_b{batch}"]] for n, r in results.items()])


# What a person scans across experiments (``dvc exp show``: five columns a model); the rest of
# each row is in metrics/evaluate_detail.json and metrics/evaluate_splits.json.
SUMMARY_KEYS = ("accuracy", "f1_macro", "ece", "size_mb", "latency_ms")


def summary(rows: dict[str, dict]) -> dict[str, dict]:
    return {name: {k: row[k] for k in SUMMARY_KEYS} for name, row in rows.items()}


def run_evaluate(params: Params) -> None:
    results = evaluate_all(params)
    write_model_table(results["test"], params.evaluate.throughput_batch)
    write_json(paths.EVALUATE_METRICS, summary(results["test"]))
    write_json(paths.EVALUATE_DETAIL, results["test"])
    write_json(paths.EVALUATE_SPLITS_METRICS, {s: rows for s, rows in results.items() if s != "test"})
    for name, row in results["test"].items():
        log.info("%-21s acc %.4f  ece %.4f  %8.3f MB  %7.3f ms", name, row["accuracy"], row["ece"], row["size_mb"],
                 row["latency_ms"])
