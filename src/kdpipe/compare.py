"""Side-by-side comparison of distillation methods on the same data, networks and budget.

Every method in ``compare.methods`` trains the student (``student.*`` recipe) from the student
link's teacher (``distill.teacher``), once per seed in ``compare.seeds``: one cell each, a stage
of its own in compare/dvc.yaml (``matrix:``), so DVC caches every finished cell and an
interrupted comparison loses one cell, not the table. Each run is scored on the test split at
its best validation epoch (the checkpoint the pipeline would keep) and at its last epoch. The
aggregate stage writes ``metrics/methods.json`` (mean and, over several seeds, std) and
``plots/methods/methods.csv``.
"""

from __future__ import annotations

import csv
import logging
import statistics
from pathlib import Path

import torch

from kdpipe import paths
from kdpipe.config import Params
from kdpipe.data.batches import BatchTransform
from kdpipe.data.prepared import PreparedData, load_prepared
from kdpipe.engine.inference import predict_logits
from kdpipe.errors import MissingInputError
from kdpipe.io import atomic_path, read_json, write_json
from kdpipe.training import train_link

log = logging.getLogger("kdpipe")
METHODS_METRICS = paths.METRICS_DIR / "methods.json"
METHODS_PLOT = paths.PLOTS_DIR / "methods" / "methods.csv"
CELLS_DIR = paths.METRICS_DIR / "compare"
SCORES = ("test_accuracy_best_val", "test_accuracy_last", "train_seconds")


def test_accuracy(model: torch.nn.Module, test: PreparedData, batch_size: int) -> float:
    transform = BatchTransform(test.meta, torch.device("cpu"), channels_last=False)
    logits = predict_logits(model.to("cpu"), test["test"], transform, batch_size)
    return float((logits.argmax(1) == test["test"].labels).float().mean())


def run_one(
    params: Params, method: str, seed: int, test: PreparedData, teacher_checkpoint: tuple[Path, str] | None = None
) -> dict:
    """Train the student with ``method`` and ``seed`` (from ``teacher_checkpoint``: a checkpoint and
    the stage that makes it, instead of the link's teacher); score it on the test split."""
    link = params.distill.model_copy(update={"method": method})
    trained = train_link(params, "student", link=link, seed=seed, teacher_checkpoint=teacher_checkpoint)
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


def cell_path(method: str, seed: int) -> Path:
    """One comparison cell's result (compare/dvc.yaml: one cached stage per method and seed)."""
    return CELLS_DIR / f"{method}-{seed}.json"


def run_cell(params: Params, method: str, seed: int) -> dict:
    """Train the student with ``method`` and ``seed``; write and return its scores."""
    test = load_prepared(paths.PREPARED_DIR, splits=("test",))
    result = {"method": method, "seed": seed, "student": params.student.arch, "epochs": params.student.epochs,
              **run_one(params, method, seed, test)}
    write_json(cell_path(method, seed), result)
    log.info("compare: %-12s seed %d  test acc %.4f (best val) %.4f (last)", method, seed,
             result["test_accuracy_best_val"], result["test_accuracy_last"])
    return result


def compare_methods(params: Params) -> dict:
    """The table over every cell of ``compare.methods`` x ``compare.seeds`` (each written by its
    own stage) -> metrics/methods.json and plots/methods/methods.csv."""
    table = {}
    for method in params.compare.methods:
        runs = []
        for seed in params.compare.seeds:
            path = cell_path(method, seed)
            if not path.is_file():
                raise MissingInputError(f"{path}: the cell of method {method}, seed {seed} has not run: "
                                        "run `dvc repro compare/dvc.yaml`")
            runs.append(read_json(path))
        table[method] = {"method": method, "student": params.student.arch, "epochs": params.student.epochs,
                         "seeds": list(params.compare.seeds), **aggregate(runs)}
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
