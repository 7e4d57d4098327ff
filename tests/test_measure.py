"""Timing within a budget: a slow model is timed for about the budget, not for a fixed count."""

import time

import numpy as np
import pytest

from kdpipe.config import EvaluateConfig
from kdpipe.measure import MIN_RUNS, median_latency_ms, throughput


class Counted:
    def __init__(self, seconds: float):
        self.seconds, self.calls = seconds, 0

    def __call__(self, _x):
        self.calls += 1
        time.sleep(self.seconds)


def test_a_slow_model_stops_at_the_budget_after_the_minimum_runs():
    slow = Counted(0.05)
    started = time.perf_counter()
    ms = median_latency_ms(slow, np.zeros(1), warmup=10, runs=50, budget_s=0.3)
    spent = time.perf_counter() - started
    # warm-up stops after a quarter of the budget (2 calls), the timed runs once it is spent
    assert slow.calls <= 2 + 7 and spent < 0.3 + 2 * 0.05 + 0.05
    assert ms == pytest.approx(50, abs=20)

    slower = Counted(0.2)  # one run outlasts the budget: still a median of MIN_RUNS
    median_latency_ms(slower, np.zeros(1), warmup=10, runs=50, budget_s=0.1)
    assert slower.calls == 1 + MIN_RUNS


def test_a_fast_model_makes_all_its_runs_and_no_budget_means_none_is_cut():
    fast = Counted(0.0)
    median_latency_ms(fast, np.zeros(1), warmup=5, runs=40, budget_s=10.0)
    assert fast.calls == 45
    unbounded = Counted(0.002)
    assert throughput(unbounded, np.zeros((8, 1)), warmup=2, runs=20) == pytest.approx(8 / 0.002, rel=0.5)
    assert unbounded.calls == 22


def test_the_budget_is_a_positive_number_of_seconds():
    assert EvaluateConfig().timing_budget_s == 5.0
    with pytest.raises(ValueError, match="timing_budget_s"):
        EvaluateConfig(timing_budget_s=0)
