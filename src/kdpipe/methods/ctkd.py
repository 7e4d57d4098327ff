"""``ctkd``: curriculum temperature for KD (Li et al., "Curriculum Temperature for Knowledge
Distillation", AAAI 2023).

The KD temperature is learned, adversarially: one global temperature (the paper's default,
"Global-T") is a parameter of the method that the student's loss reaches through a gradient
reversal layer (Ganin & Lempitsky, 2015). Forward, the layer is the identity; backward, it
multiplies the gradient by −λ, so while the student descends the KD loss the temperature
*ascends* it, making the task harder. λ is the curriculum: it rises from 0 to ``lambda_max``
along half a cosine,

    λ(epoch) = lambda_max · (1 − cos(π · min(epoch / (curriculum · epochs), 1))) / 2,

so the temperature barely moves at first and is fully adversarial later. The reference code
ramps over 10 epochs of 240 (``--decay_loops 10``); ``curriculum`` is that span as a fraction
of the run (default 10/240: identical to the reference at 240 epochs, and at full strength from
the first epoch of a run of 24 epochs or fewer).

The temperature is kept in [``t_min``, ``t_max``] (CTKD's ``t_start`` 1 and ``t_end`` 20) by a
sigmoid: T = t_min + (t_max − t_min) · sigmoid(θ), with θ the learned parameter, started where
T equals the link's ``distill.temperature`` (4 by default; brought just inside the range if it
lies outside). A hard clamp would stop the gradient at the bounds and leave the parameter stuck
there; the sigmoid keeps it moving. The
parameter trains with the student through ``method.parameters()`` (so the run's weight decay
reaches it, as in the reference, where the temperature module sits in the same SGD optimizer),
and is never saved with the student.

loss = alpha · T² · KL(softmax(t/T) ‖ softmax(s/T)) + (1 − alpha) · CE(s, y), with the link's
``alpha``, exactly the ``kd`` loss at the learned T. With ``distill.logit_standardize`` the
logits are z-scored per sample inside the KL term (Sun et al., 2024, report it on CTKD too).

Why CTKD for issue 17's "one of MLKD / CTKD / DOT": CTKD fits the method-file contract (one
file, a ``Method`` with its own parameter; no change to the data pipeline or the optimiser).
MLKD (Jin et al., 2023) needs strong and weak augmented views of every image in each batch,
which the data pipeline does not produce, and DOT (Zhao et al., 2023) replaces the optimiser's
momentum for the distillation and task gradients separately; both would change the trainer.

Reference implementation followed: zju-vipa/CTKD (``Global_T`` with its gradient reversal
layer, the ``CosineDecay`` curriculum, ``t_start``/``t_end``). The code here is our own.
"""

from __future__ import annotations

import math

import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator
from torch import nn

from kdpipe.methods.common.base import Method, register_method
from kdpipe.methods.common.losses import kd_loss


class CTKDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lambda_max: float = Field(1.0, ge=0, description="final strength of the gradient reversal")
    curriculum: float = Field(
        10 / 240, gt=0, le=1, description="fraction of the run over which λ rises from 0 to lambda_max (cosine)"
    )
    t_min: float = Field(1.0, gt=0, description="lowest temperature")
    t_max: float = Field(20.0, gt=0, description="highest temperature")

    @field_validator("t_max")
    @classmethod
    def _above_t_min(cls, v: float, info: ValidationInfo) -> float:
        t_min = info.data.get("t_min")
        if t_min is not None and v <= t_min:
            raise ValueError(f"t_max must be above t_min ({t_min})")
        return v


class _ReverseGradient(torch.autograd.Function):
    """Identity forward; backward multiplies the gradient by −λ."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, lam: float) -> torch.Tensor:
        ctx.lam = lam
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return -ctx.lam * grad, None


def reverse_gradient(x: torch.Tensor, lam: float) -> torch.Tensor:
    return _ReverseGradient.apply(x, lam)


def cosine_curriculum(epoch: int, epochs: int, lambda_max: float, fraction: float) -> float:
    """λ for a 1-based ``epoch`` of ``epochs``: 0 → ``lambda_max`` along half a cosine over
    ``fraction`` of the run, then constant."""
    progress = min(epoch / (fraction * epochs), 1.0)
    return lambda_max * (1.0 - math.cos(math.pi * progress)) / 2.0


class GlobalTemperature(nn.Module):
    """One learned temperature in (t_min, t_max), reached through a gradient reversal layer."""

    def __init__(self, initial: float, t_min: float, t_max: float):
        super().__init__()
        self.t_min, self.t_max = t_min, t_max
        # start at ``initial`` (nudged inside the open interval the sigmoid can reach)
        span = t_max - t_min
        frac = min(max((initial - t_min) / span, 1e-3), 1 - 1e-3)
        self.theta = nn.Parameter(torch.tensor(math.log(frac / (1 - frac))))

    def forward(self, lam: float) -> torch.Tensor:
        theta = reverse_gradient(self.theta, lam)
        return self.t_min + (self.t_max - self.t_min) * torch.sigmoid(theta)


@register_method("ctkd")
class CurriculumTemperatureKD(Method):
    logits_only = True
    standardizes_logits = True

    Params = CTKDParams

    def setup(self):
        p = self.params
        self.temperature = GlobalTemperature(self.cfg.temperature, p.t_min, p.t_max)

    @property
    def lam(self) -> float:
        p = self.params
        return cosine_curriculum(self.epoch, self.epochs, p.lambda_max, p.curriculum)

    def forward(self, batch):
        x, y = batch.images, batch.labels
        teacher = self.teacher.logits(batch)
        logits = self.student(x)
        t = self.temperature(self.lam)
        loss, kd, ce = kd_loss(logits, teacher, y, t, self.cfg.alpha, self.label_smoothing, self.standardize)
        return logits, loss, {"kd": kd.detach(), "ce": ce.detach(), "temperature": t.detach()}
