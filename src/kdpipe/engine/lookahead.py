"""airbench's Lookahead (Jordan, 2024, after hlb-CIFAR10): every ``every`` optimiser steps the
network's weights and BatchNorm statistics move to an exponential average of themselves, and
training continues from that average. The average's decay rises from 0 to 0.95**every with the
cube of the run's progress, so early steps are left alone and the end of the run is smoothed;
the model a run ends with is the average."""

from __future__ import annotations

from typing import Any

import torch

DECAY_PER_STEP = 0.95  # airbench's: 0.95**5 for its pull every 5 steps


class Lookahead:
    def __init__(self, network: torch.nn.Module, every: int, total_steps: int):
        self.network, self.every, self.total_steps = network, every, total_steps
        # floating-point state only (weights, BN running statistics); counters stay the network's
        self.average = {k: v.detach().clone() for k, v in network.state_dict().items() if v.is_floating_point()}
        self.steps = 0

    def step(self) -> None:
        """Called after each optimiser step."""
        self.steps += 1
        if self.steps % self.every == 0:
            self._pull(DECAY_PER_STEP**self.every * (self.steps / self.total_steps) ** 3)

    def finish(self) -> None:
        """The network becomes the average (the last pull's, unchanged)."""
        self._pull(1.0)

    @torch.no_grad()
    def _pull(self, decay: float) -> None:
        state = self.network.state_dict()
        for name, average in self.average.items():
            average.lerp_(state[name].to(average.dtype), 1 - decay)
            state[name].copy_(average)

    def state_dict(self) -> dict[str, Any]:
        return {"steps": self.steps, "average": self.average}

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.steps = saved["steps"]
        for name, value in saved["average"].items():
            self.average[name].copy_(value)
