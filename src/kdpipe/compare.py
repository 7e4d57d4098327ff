"""Side-by-side comparison of distillation methods on the same data, networks and budget.

Every method in ``compare.methods`` trains the student (``student.*`` recipe) from the student
link's teacher (``distill.teacher``), once per seed in ``compare.seeds``; each run is scored on the
test split at its best validation epoch (the checkpoint the pipeline would keep) and at its last
epoch. Results: ``metrics/methods.json`` (mean and, over several seeds, std) and
``plots/methods/methods.csv``.
"""

from __future__ import annotations

import csv
import logging
import statistics

import torch

from kdpipe import paths
from kdpipe.config import Params
from kdpipe.data.batches import BatchTransform
from kdpipe.data.prepared import PreparedData, load_prepared
from kdpipe.engine.inference import predict_logits
from kdpipe.io import atomic_path, write_json
from kdpipe.training import train_link

log = logging.getLogger("kdpipe")
METHODS_METRICS = paths.METRICS_DIR / "methods.json"
METHODS_PLOT = paths.PLOTS_DIR / "methods" / "methods.csv"
SCORES = ("test_accuracy_best_val", "test_accuracy_last", "train_seconds")


def test_accuracy(model: torch.nn.Module, test: PreparedData, batch_size: int) -> float:
    transform = BatchTransform(test.meta, torch.device("cpu"), channels_last=False)
    logits = predict_logits(model.to("cpu"), test["test"], transform, batch_size)
    return float((logits.argmax(1) == test["test"].labels).float().mean())


def run_one(params: Params, method: str, seed: int, test: PreparedData) -> dict:
    link = params.distill.model_copy(update={"method": method})
    trained = train_link(params, "student", link=link, seed=seed)
    batch = params.train.eval_batch_size
    best = test_accuracy(trained.student, test, batch)
    trained.student.load_state_dict(trained.result.last_state)
    last = test_accuracy(trained.student, test, batch)
    return {
        "test_accuracy_best_val": round(best, 6),
        "test_accuracy_last": round(last, 6),
        "best_epoch": trained.result.best_epoch,
        "train_seconds": round(trained.result.train_seconds, 2),
        "extra_params": trained.extra_params,
        "teacher": params.role(trained.teacher_role).arch if trained.teacher_role else None,
    }


def aggregate(runs: list[dict]) -> dict:
    row = {k: runs[0][k] for k in ("extra_params", "teacher")}
    for key in SCORES:
        values = [r[key] for r in runs]
        row[key] = round(statistics.fmean(values), 6)
        if len(values) > 1:
            row[f"{key}_std"] = round(statistics.stdev(values), 6)
    row["runs"] = len(runs)
    return row


def compare_methods(params: Params) -> dict:
    table = {}
    test = load_prepared(paths.PREPARED_DIR, splits=("test",))
    for method in params.compare.methods:
        runs = [run_one(params, method, seed, test) for seed in params.compare.seeds]
        row = aggregate(runs)
        table[method] = {
            "student": params.student.arch,
            "epochs": params.student.epochs,
            **row,
        }
        log.info("compare: %-12s test acc %.4f (best val) %.4f (last)", method,
                 row["test_accuracy_best_val"], row["test_accuracy_last"])
    write_json(METHODS_METRICS, table)
    with atomic_path(METHODS_PLOT) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["method", "test_accuracy_best_val", "test_accuracy_last", "train_seconds"])
        for method, row in table.items():
            writer.writerow([method, *(row[k] for k in SCORES)])
    return table


def markdown_table(table: dict) -> str:
    lines = [
        "| method | student | teacher | epochs | test acc (best val) | test acc (last) | train s | extra params |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for method, row in table.items():
        std = f" ± {row['test_accuracy_best_val_std']:.4f}" if "test_accuracy_best_val_std" in row else ""
        lines.append(
            f"| {method} | {row['student']} | {row['teacher'] or '—'} | {row['epochs']} | "
            f"{row['test_accuracy_best_val']:.4f}{std} | "
            f"{row['test_accuracy_last']:.4f} | {row['train_seconds']:.0f} | {row['extra_params']:,} |"
        )
    return "\n".join(lines)
