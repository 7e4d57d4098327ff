"""Stages of a benchmark experiment (experiments/<name>/dvc.yaml, run in that folder):

    python ../../src/benchmark.py --teacher PAIR             # teacher@PAIR: the pair's teacher
    python ../../src/benchmark.py --cell PAIR METHOD SEED    # cell@PAIR-METHOD-SEED: one student
    python ../../src/benchmark.py                            # table: metrics/methods.json
"""

import argparse

from kdpipe.benchmark import benchmark_table, run_cell, run_teacher, teacher_stage
from kdpipe.stage import run_stage

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--teacher", metavar="PAIR", help="train the teacher of this pair (benchmark.pairs)")
    parser.add_argument("--cell", nargs=3, metavar=("PAIR", "METHOD", "SEED"), help="train one cell's student")
    args = parser.parse_args()
    if args.teacher and args.cell:
        parser.error("--teacher and --cell are separate stages")
    if args.teacher:
        run_stage(teacher_stage(args.teacher), lambda p: run_teacher(p, args.teacher), distributed=True)
    elif args.cell:
        pair, method, seed = args.cell
        if not seed.lstrip("-").isdigit():
            parser.error(f"--cell: SEED must be an integer (got {seed!r})")
        run_stage(f"cell@{pair}-{method}-{seed}", lambda p: run_cell(p, pair, method, int(seed)))
    else:
        run_stage("table", benchmark_table)
