"""CPU speed of a model callable: batch-1 latency and batched throughput, after warm-up."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import numpy as np


def median_latency_ms(run: Callable[[np.ndarray], object], x: np.ndarray, warmup: int, runs: int) -> float:
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        run(x)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def throughput(run: Callable[[np.ndarray], object], batch: np.ndarray, warmup: int, runs: int) -> float:
    """Images per second at ``len(batch)``, from the median batch time."""
    return len(batch) / (median_latency_ms(run, batch, warmup, runs) / 1000.0)
