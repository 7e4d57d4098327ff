"""Deployment benchmark: the evaluate stage's measurements for any model files, side by side in
one run, with the deployment goals checked as ratios.

    PYTHONPATH=src python -m kdpipe.deploy_benchmark [FILE ...] [--threads 1] [--batch 64]

Files are kdpipe ``.pt`` checkpoints or ``.onnx`` files (default: the student in every form).
Accuracy is measured on the prepared test split when it matches the model's classes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from kdpipe import paths
from kdpipe.config import EvaluateConfig
from kdpipe.data.prepared import load_prepared
from kdpipe.errors import KdpipeError
from kdpipe.evaluate import speed
from kdpipe.model_file import open_model

DEFAULT_FILES = [
    paths.checkpoint_path("student"), paths.STUDENT_ONNX, paths.STUDENT_INT8_ONNX,
    paths.STUDENT_QAT_INT8_ONNX, paths.STUDENT_DYNAMIC_INT8_ONNX,
]
# The deployment goals: int8 accuracy >= fp32 student - 0.5 pt; int8 file >= 3.5x smaller than
# the fp32 ONNX; int8 batch-1 latency >= 2x faster than the fp32 student in PyTorch eager.
MAX_ACCURACY_DROP, MIN_SIZE_RATIO, MIN_SPEEDUP = 0.005, 3.5, 2.0


def test_inputs(class_names: list[str], image_shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray | None]:
    """uint8 images: the prepared test split if it suits the model; otherwise random ones (timings only)."""
    try:
        data = load_prepared(paths.PREPARED_DIR, splits=("test",))
    except KdpipeError:
        data = None
    if data is not None and data.meta.class_names == class_names and data.meta.image_shape == tuple(image_shape):
        test = data["test"]
        return test.images.numpy(), test.labels.numpy()
    return np.random.default_rng(0).integers(0, 256, (256, *image_shape), dtype=np.uint8), None


def goal_lines(rows: dict[str, dict]) -> list[tuple[str, bool]]:
    by_name = {Path(k).name: r for k, r in rows.items()}
    student, fp32, lines = by_name.get("student.pt"), by_name.get("student.onnx"), []
    for name in ("student_int8.onnx", "student_qat_int8.onnx"):
        int8 = by_name.get(name)
        if int8 is None or student is None or fp32 is None:
            continue
        if "accuracy" in int8:
            drop = student["accuracy"] - int8["accuracy"]
            text = (f"{name}: accuracy {int8['accuracy']:.4f} vs fp32 student {student['accuracy']:.4f} "
                    f"(drop {drop * 100:+.2f} pt, goal <= {MAX_ACCURACY_DROP * 100:.1f} pt)")
            lines.append((text, drop <= MAX_ACCURACY_DROP))
        size = fp32["size_mb"] / int8["size_mb"]
        lines.append((f"{name}: {size:.2f}x smaller than student.onnx (goal >= {MIN_SIZE_RATIO}x)", size >= MIN_SIZE_RATIO))
        speed = student["latency_ms"] / int8["latency_ms"]
        text = f"{name}: batch-1 latency {speed:.2f}x faster than the fp32 student in PyTorch eager (goal >= {MIN_SPEEDUP}x)"
        lines.append((text, speed >= MIN_SPEEDUP))
    return lines


def run(files: list[Path], cfg: EvaluateConfig) -> dict[str, dict]:
    rows: dict[str, dict] = {}
    for path in files:
        model = open_model(path)
        x, labels = test_inputs(model.class_names, model.image_shape)
        row = {"runtime": model.runtime}
        if labels is None:
            print(f"{path}: no matching prepared test split, timing on random inputs", file=sys.stderr)
        else:
            row["accuracy"] = round(float((model.logits(x).argmax(1) == labels).mean()), 6)
        rows[str(path)] = {**row, **speed(model, x, cfg)}
    return rows


def print_table(rows: dict[str, dict], cfg: EvaluateConfig) -> None:
    ref = next(iter(rows.values()))
    tput = f"throughput_b{cfg.throughput_batch}"
    print(f"{'file':34} {'runtime':12} {'accuracy':>8} {'size MB':>9} {'params':>11} "
          f"{'b1 ms':>8} {'img/s b' + str(cfg.throughput_batch):>11} {'speed-up':>8} {'smaller':>8}")
    for name, row in rows.items():
        acc = f"{row['accuracy']:.4f}" if "accuracy" in row else "—"
        print(f"{name:34} {row['runtime']:12} {acc:>8} {row['size_mb']:9.3f} {row['params']:11,} "
              f"{row['latency_ms']:8.3f} {row[tput]:11.1f} {ref['latency_ms'] / row['latency_ms']:7.2f}x "
              f"{ref['size_mb'] / row['size_mb']:7.2f}x")
    budget = "" if cfg.timing_budget_s == float("inf") else f", within {cfg.timing_budget_s:g} s"
    print(f"(threads {cfg.latency_threads}; latency: median of up to {cfg.latency_runs} runs after {cfg.latency_warmup} "
          f"warm-up{budget}; speed-up and size ratios against the first file)")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """The module docstring as written, and every option's default."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kdpipe-deploy-benchmark", description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("files", nargs="*", type=Path, default=DEFAULT_FILES)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--batch", type=int, default=64, help="batch size of the throughput measurement")
    parser.add_argument("--runs", type=int, default=50, help="timed batch-1 runs")
    parser.add_argument("--budget", type=float, default=float("inf"),
                        help="seconds timing each file's latency (and again its throughput); runs stop there")
    args = parser.parse_args(argv)
    cfg = EvaluateConfig(latency_threads=args.threads, latency_runs=args.runs, throughput_batch=args.batch,
                         timing_budget_s=args.budget)
    try:
        rows = run(args.files, cfg)
    except KdpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print_table(rows, cfg)
    goals = goal_lines(rows)
    for line, ok in goals:
        print(f"[{'PASS' if ok else 'FAIL'}] {line}")
    return 0 if all(ok for _, ok in goals) else 1


if __name__ == "__main__":
    sys.exit(main())
