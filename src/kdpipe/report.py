"""Markdown results table of a run, and its refresh inside README.md.

    PYTHONPATH=src python -m kdpipe.report            # print the table of metrics/evaluate.json
    PYTHONPATH=src python -m kdpipe.report --readme   # write it (and the methods table) into README
    PYTHONPATH=src python -m kdpipe.report --experiment cifar10   # experiments/cifar10's table, into
                                                                  # docs/experiments.md
    PYTHONPATH=src python -m kdpipe.report --benchmark s4_tutorial  # a benchmark's methods.json, into
                                                                    # experiments/s4_tutorial/README.md
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from kdpipe import benchmark, paths
from kdpipe.compare import METHODS_METRICS, markdown_table
from kdpipe.io import read_json, write_text

START, END = "<!-- results:start -->", "<!-- results:end -->"
METHODS_START, METHODS_END = "<!-- methods:start -->", "<!-- methods:end -->"
METHODS_PAGE = Path("docs/methods.md")  # beside the README: the methods table lives there
EXPERIMENTS_PAGE = Path("docs/experiments.md")  # the experiment pipelines' tables, between <!-- <name>:start/end -->
ROWS = [
    ("teacher", "teacher"),
    ("assistant", "assistant"),
    ("student", "student"),
    (paths.TWIN, "student without KD (twin)"),
    ("student_onnx", "student, ONNX fp32"),
    ("student_int8", "student, ONNX int8 (static)"),
    ("student_qat", "student, ONNX int8 (QAT)"),
    ("student_dynamic_int8", "student, ONNX int8 (dynamic)"),
]


def _throughput(row: dict) -> tuple[str, float]:
    """(batch size, images/s) of the ``throughput_b<batch>`` entry of an evaluate row."""
    for key, value in row.items():
        if key.startswith("throughput_b"):
            return key.removeprefix("throughput_b"), value
    return "?", 0.0


def results_table(evaluate: dict, train: dict[str, dict] | None = None) -> str:
    train = train or {}
    batch = _throughput(evaluate.get("student", {}))[0]
    tta = any("accuracy_flip_tta" in row for row in evaluate.values())  # evaluate.flip_tta
    lines = [
        "| model | arch | test accuracy " + ("| with flip TTA " if tta else "")
        + "| macro F1 | params | file MB | latency ms (CPU, batch 1) "
        + f"| speed-up vs student | images/s (batch {batch}) | train s |",
        "|---|---|---:|" + ("---:|" if tta else "") + "---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, label in ROWS:
        row = evaluate.get(key)
        if row is None:
            continue
        seconds = train.get(key, {}).get("train_seconds")
        lines.append(
            f"| {label} | {row['arch']} | {row['accuracy']:.4f} | "
            + (f"{row['accuracy_flip_tta']:.4f} | " if tta else "")
            + f"{row['f1_macro']:.4f} | {row['params']:,} | "
            f"{row['size_mb']:.2f} | {row['latency_ms']:.3f} | {row.get('speedup_vs_student', 0):.2f}× | "
            f"{_throughput(row)[1]:,.0f} | {'' if seconds is None else f'{seconds:.0f}'} |"
        )
    threads = evaluate.get("student", {}).get("latency_threads")
    if threads:
        plural = "" if threads == 1 else "s"
        lines.append(
            f"\nLatency: median of timed runs after warm-up; latency and throughput with {threads} CPU thread{plural}; "
            "speed-up against the fp32 student in PyTorch eager."
        )
    return "\n".join(lines)


def load_run(metrics_dir: Path = paths.METRICS_DIR) -> tuple[dict, dict]:
    evaluate = read_json(metrics_dir / paths.EVALUATE_DETAIL.name)
    train = {}
    for role in paths.STAGE_OF_ROLE:
        path = metrics_dir / f"train_{role}.json"
        if path.is_file():
            train[role] = read_json(path)
    return evaluate, train


def update_readme(readme: Path, table: str, start: str = START, end: str = END) -> None:
    text = readme.read_text()
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.DOTALL)
    if not pattern.search(text):
        raise SystemExit(f"{readme}: no {start} ... {end} markers")
    write_text(readme, pattern.sub(lambda _: f"{start}\n{table}\n{end}", text))


def benchmark_table(folder: Path) -> str:
    """The README table of a benchmark experiment: its metrics/methods.json, with the reference
    numbers of its published.json (``{"<pair>/<method>": {"test_accuracy": %, "source": ...}}``)."""
    published = folder / "published.json"
    return benchmark.markdown_table(
        read_json(folder / benchmark.METHODS_METRICS), read_json(published) if published.is_file() else None
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readme", nargs="?", const="README.md",
                        help="update the results table in this README (and the methods table in docs/methods.md)")
    parser.add_argument("--experiment", help=f"the table of experiments/<name>/, written into {EXPERIMENTS_PAGE}")
    parser.add_argument("--benchmark", metavar="NAME",
                        help="the table of benchmark experiments/<name>/ (metrics/methods.json, and published.json "
                        "beside it when there), written into its README.md")
    args = parser.parse_args(argv)
    if args.benchmark:
        folder = Path("experiments") / args.benchmark
        update_readme(folder / "README.md", benchmark_table(folder))
        return
    if args.experiment:
        table = results_table(*load_run(Path("experiments") / args.experiment / paths.METRICS_DIR))
        update_readme(EXPERIMENTS_PAGE, table, f"<!-- {args.experiment}:start -->", f"<!-- {args.experiment}:end -->")
        return
    table = results_table(*load_run())
    methods = markdown_table(read_json(METHODS_METRICS)) if METHODS_METRICS.is_file() else None
    if args.readme:
        update_readme(Path(args.readme), table)
        if methods:
            update_readme(Path(args.readme).parent / METHODS_PAGE, methods, METHODS_START, METHODS_END)
    else:
        sys.stdout.write(table + "\n" + (f"\n{methods}\n" if methods else ""))


if __name__ == "__main__":
    main()
