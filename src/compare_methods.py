"""Stages of compare/dvc.yaml: one comparison cell (``--method M --seed S`` ->
metrics/compare/M-S.json), or, without arguments, the table over all cells -> metrics/methods.json,
plots/methods/methods.csv."""

import argparse

from kdpipe.compare import compare_methods, run_cell
from kdpipe.stage import run_stage

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--method", help="one cell: this distillation method (default: the table over all cells)")
    parser.add_argument("--seed", type=int, help="one cell: this seed")
    args = parser.parse_args()
    if (args.method is None) != (args.seed is None):
        parser.error("--method and --seed go together")
    if args.method is None:
        run_stage("compare_methods", compare_methods, dvc_file="compare/dvc.yaml")
    else:
        run_stage(f"compare_cell@{args.method}-{args.seed}", lambda p: run_cell(p, args.method, args.seed),
                  dvc_file="compare/dvc.yaml")
