"""CPU speed of a model callable: batch-1 latency and batched throughput, after warm-up, within a
time budget: a 224-px teacher is timed for seconds, not for a fixed count of slow runs."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable

import numpy as np

MIN_RUNS = 3  # timed runs even when one run outlasts the budget: a median of one is noise
WARMUP_SHARE = 0.25  # of the budget, at most, spent warming up


def median_latency_ms(run: Callable[[np.ndarray], object], x: np.ndarray, warmup: int, runs: int,
                      budget_s: float = math.inf) -> float:
    """Median milliseconds of ``run(x)``: up to ``warmup`` untimed calls (stopping once a quarter
    of ``budget_s`` is spent), then up to ``runs`` timed calls, stopping once the budget is spent
    (after at least ``MIN_RUNS``)."""
    start = time.perf_counter()
    for _ in range(warmup):
        run(x)
        if time.perf_counter() - start > WARMUP_SHARE * budget_s:
            break
    times: list[float] = []
    while len(times) < max(runs, 1):
        begin = time.perf_counter()
        run(x)
        end = time.perf_counter()
        times.append(end - begin)
        if end - start > budget_s and len(times) >= min(MIN_RUNS, runs):
            break
    return statistics.median(times) * 1000.0


def throughput(run: Callable[[np.ndarray], object], batch: np.ndarray, warmup: int, runs: int,
               budget_s: float = math.inf) -> float:
    """Images per second at ``len(batch)``, from the median batch time."""
    return len(batch) / (median_latency_ms(run, batch, warmup, runs, budget_s) / 1000.0)
