"""Timing variants side by side: round-robin, so a machine's drift hits every variant alike."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Hashable


def interleaved(variants: dict[Hashable, Callable[[], object]], rounds: int, repeats: int = 1) -> dict[Hashable, list[float]]:
    """Run each variant ``repeats`` times as a warm-up (compilation included), then ``rounds``
    rounds of every variant in turn. Returns seconds per call, one figure per round."""
    for run in variants.values():
        for _ in range(repeats):
            run()
    seconds: dict[Hashable, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, run in variants.items():
            start = time.perf_counter()
            for _ in range(repeats):
                run()
            seconds[name].append((time.perf_counter() - start) / repeats)
    return seconds


def images_per_second(images: int, seconds: list[float]) -> str:
    """``images`` per call as images/s: the median over rounds, then every round."""
    rounds = ", ".join(f"{images / s:.0f}" for s in seconds)
    return f"{images / statistics.median(seconds):6.1f} images/s   (rounds: {rounds})"
