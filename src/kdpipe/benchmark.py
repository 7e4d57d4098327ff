"""Benchmark matrices: ``experiments/<name>/dvc.yaml`` over ``benchmark.pairs`` x
``benchmark.methods`` x ``benchmark.seeds``.

Each pair's teacher trains once (stage ``teacher@<pair>``: the ``teacher`` recipe with the pair's
architecture -> models/teacher_<pair>.pt), then every cell (``cell@<pair>-<method>-<seed>``)
trains the pair's student (the ``student`` recipe, the ``distill`` link with the cell's method)
from it and scores the test split at the best-validation epoch and at the last epoch. Each is a
stage DVC caches on its own. The ``table`` stage averages the seeds into
``metrics/methods.json`` (one row per pair and method), ``plots/methods/methods.csv``; the
experiment's README table comes from that file (``python -m kdpipe.report --benchmark <name>``).
Validation is held out of the training images and picks the epoch; the test split chooses nothing.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

from kdpipe import paths
from kdpipe.compare import SCORES, aggregate, run_one, test_accuracy
from kdpipe.config import Params, for_pair
from kdpipe.data.prepared import load_prepared
from kdpipe.errors import ConfigError, MissingInputError
from kdpipe.io import atomic_path, read_json, write_json
from kdpipe.methods import METHODS, link_with
from kdpipe.models.checkpoint import load_checkpoint
from kdpipe.training import train_role

log = logging.getLogger("kdpipe")
METHODS_METRICS = paths.METRICS_DIR / "methods.json"
METHODS_PLOT = paths.PLOTS_DIR / "methods" / "methods.csv"
CELLS_DIR = paths.METRICS_DIR / "cells"
TEACHERS_DIR = paths.METRICS_DIR / "teachers"


def pair_params(params: Params, pair: str) -> Params:
    """The experiment's params with the pair's architectures (and learning rates) in the teacher
    and student recipes and its method settings (``distill.<method>.per_pair.<pair>``) in the
    link; the student learns from the teacher directly."""
    for role in ("teacher", "student"):
        if params.role(role).checkpoint:
            raise ConfigError(f"{role}.checkpoint: a benchmark trains every pair's networks itself; unset it")
    cfg = params.benchmark.pairs.get(pair)
    if cfg is None:
        known = ", ".join(params.benchmark.pairs) or "none"
        raise ConfigError(f"benchmark.pairs: no pair '{pair}' (pairs: {known})")
    teacher = {"arch": cfg.teacher} | ({"lr": cfg.teacher_lr} if cfg.teacher_lr is not None else {})
    student = {"arch": cfg.student} | ({"lr": cfg.student_lr} if cfg.student_lr is not None else {})
    return params.model_copy(update={
        "teacher": params.teacher.model_copy(update=teacher),
        "student": params.student.model_copy(update=student),
        "distill": for_pair(params.distill, pair).model_copy(update={"teacher": "teacher"}),
    })


def teacher_name(pair: str) -> str:
    """models/<name>.pt, metrics/train_<name>.json and plots/train/<name>/ of a pair's teacher."""
    return f"teacher_{pair}"


def teacher_stage(pair: str) -> str:
    return f"teacher@{pair}"


def cell_path(pair: str, method: str, seed: int) -> Path:
    return CELLS_DIR / f"{pair}-{method}-{seed}.json"


def teacher_metrics_path(pair: str) -> Path:
    return TEACHERS_DIR / f"{pair}.json"


def run_teacher(params: Params, pair: str) -> dict:
    """Train the pair's teacher (resumable, logged like train_teacher) and score it on the test split."""
    pp = pair_params(params, pair)
    name = teacher_name(pair)
    train_role(pp, "teacher", name=name)
    model, _ = load_checkpoint(paths.checkpoint_path(name))
    test = load_prepared(paths.PREPARED_DIR, splits=("test",))
    train = read_json(paths.train_metrics_path(name))
    result = {
        "pair": pair, "teacher": pp.teacher.arch, "epochs": pp.teacher.epochs,
        "val_accuracy_best": train["best_val_accuracy"], "best_epoch": train["best_epoch"],
        "test_accuracy_best_val": round(test_accuracy(model, test, params.train.eval_batch_size), 6),
        "params": train["params"], "train_seconds": train["train_seconds"],
    }
    write_json(teacher_metrics_path(pair), result)
    log.info("benchmark: teacher of %s (%s): test acc %.4f", pair, pp.teacher.arch, result["test_accuracy_best_val"])
    return result


def run_cell(params: Params, pair: str, method: str, seed: int) -> dict:
    """Train the pair's student with ``method`` and ``seed`` from the pair's teacher; write and
    return its scores."""
    if method not in METHODS:
        raise ConfigError(f"--cell: unknown distillation method '{method}'; allowed: {', '.join(sorted(METHODS))}")
    pp = pair_params(params, pair)
    pp = pp.model_copy(update={"distill": link_with(pp.distill, method)})
    teacher = (paths.checkpoint_path(teacher_name(pair)), teacher_stage(pair))
    test = load_prepared(paths.PREPARED_DIR, splits=("test",))
    scores = run_one(pp, method, seed, test, teacher_checkpoint=teacher)
    result = {"pair": pair, "method": method, "seed": seed, "student": pp.student.arch, "epochs": pp.student.epochs,
              **scores, "teacher": pp.teacher.arch}  # the pair's teacher, also for `none`, which does not use it
    write_json(cell_path(pair, method, seed), result)
    log.info("benchmark: %s %-12s seed %d  test acc %.4f (best val) %.4f (last)", pair, method, seed,
             result["test_accuracy_best_val"], result["test_accuracy_last"])
    return result


def benchmark_table(params: Params) -> dict:
    """Mean (and std) over the seeds of every pair and method -> metrics/methods.json (rows keyed
    ``<pair>/<method>``) and plots/methods/methods.csv."""
    bench = params.benchmark
    if not bench.pairs:
        raise ConfigError("benchmark.pairs: empty; name at least one teacher/student pair")
    table = {}
    for pair in bench.pairs:
        teacher_file = teacher_metrics_path(pair)
        if not teacher_file.is_file():
            raise MissingInputError(f"{teacher_file}: the teacher of pair {pair} has not run: run `dvc repro`")
        teacher = read_json(teacher_file)
        pp = pair_params(params, pair)
        for method in bench.methods:
            runs = []
            for seed in bench.seeds:
                path = cell_path(pair, method, seed)
                if not path.is_file():
                    raise MissingInputError(f"{path}: the cell of pair {pair}, method {method}, seed {seed} "
                                            "has not run: run `dvc repro`")
                runs.append(read_json(path))
            table[f"{pair}/{method}"] = {
                **aggregate(runs),  # (its "teacher" is None for `none`: the pair's teacher replaces it)
                "pair": pair, "teacher": pp.teacher.arch, "student": pp.student.arch, "method": method,
                "seeds": list(bench.seeds), "epochs": pp.student.epochs,
                "teacher_test_accuracy": teacher["test_accuracy_best_val"],
            }
    write_json(METHODS_METRICS, table)
    with atomic_path(METHODS_PLOT) as tmp, open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["row", "pair", "method", *SCORES])
        for key, row in table.items():
            writer.writerow([key, row["pair"], row["method"], *(row[k] for k in SCORES)])
    return table


def _mean_std(row: dict, key: str) -> str:
    std = row.get(f"{key}_std")
    return f"{100 * row[key]:.2f}" + (f" ± {100 * std:.2f}" if std is not None else "")


def _published(published: dict[str, dict[str, float]], key: str, fmt: str) -> str:
    value = published.get(key, {}).get("test_accuracy")
    return "" if value is None else fmt % value


def markdown_table(table: dict, published: dict[str, dict[str, float]] | None = None) -> str:
    """The README table of a benchmark's metrics/methods.json: test accuracy in % (mean ± std over
    the seeds) at the best-validation epoch and at the last; ``published`` adds a column of
    reference numbers by ``<pair>/<method>`` row (``<pair>/teacher``: in brackets beside the
    teacher's accuracy), from the experiment's published.json."""
    published = published or {}
    head = "| teacher → student | method | teacher acc | test acc (best val) | test acc (last) | seeds | train s | extra params |"
    sep = "|---|---|---:|---:|---:|---|---:|---:|"
    if published:
        head, sep = head + " published |", sep + "---:|"
    lines = [head, sep]
    for key, row in table.items():
        line = (
            f"| {row['teacher']} → {row['student']} | {row['method']} | "
            f"{100 * row['teacher_test_accuracy']:.2f}{_published(published, row['pair'] + '/teacher', ' (%.2f)')} | "
            f"{_mean_std(row, 'test_accuracy_best_val')} | {_mean_std(row, 'test_accuracy_last')} | "
            f"{', '.join(map(str, row['seeds']))} | {row['train_seconds']:.0f} | {row['extra_params']:,} |"
        )
        if published:
            line += f" {_published(published, key, '%.2f') or '—'} |"
        lines.append(line)
    return "\n".join(lines)
