"""``dkd``: decoupled KD (Zhao et al., 2022): the KD loss split into a target-class term (TCKD)
and a non-target-class term (NCKD), weighted separately, ramped in over ``warmup_epochs``.
With ``distill.logit_standardize`` both logits are z-scored per sample before the DKD term
(Sun et al., 2024, who apply it to DKD the same way); the CE term keeps the raw logits."""

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from kdpipe.methods.common.base import Method, register_method
from kdpipe.methods.common.losses import standardize


class DKDParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(1.0, ge=0, description="TCKD weight")
    beta: float = Field(8.0, ge=0, description="NCKD weight")
    warmup_epochs: int = Field(0, ge=0, description="linear ramp of the DKD term (the paper uses 20 of 240)")


def dkd_loss(student, teacher, labels, alpha: float, beta: float, temperature: float) -> torch.Tensor:
    s, t = student.float() / temperature, teacher.float() / temperature
    gt = F.one_hot(labels, s.shape[1]).bool()
    p_s, p_t = F.softmax(s, dim=1), F.softmax(t, dim=1)
    # binary (target vs rest) distributions
    b_s = torch.stack([p_s[gt], (p_s * ~gt).sum(1)], dim=1).clamp_min(1e-12)
    b_t = torch.stack([p_t[gt], (p_t * ~gt).sum(1)], dim=1).clamp_min(1e-12)
    tckd = F.kl_div(b_s.log(), b_t, reduction="batchmean")
    # distributions over the non-target classes only
    masked_s = F.log_softmax(s.masked_fill(gt, -1e9), dim=1)
    masked_t = F.softmax(t.masked_fill(gt, -1e9), dim=1)
    nckd = F.kl_div(masked_s, masked_t, reduction="batchmean")
    return (alpha * tckd + beta * nckd) * temperature**2


@register_method("dkd")
class DecoupledKD(Method):
    logits_only = True
    standardizes_logits = True

    Params = DKDParams

    def forward(self, batch):
        x, y = batch.images, batch.labels
        teacher = self.teacher.logits(batch)
        logits = self.student(x)
        p = self.params
        ramp = min(self.epoch / p.warmup_epochs, 1.0) if p.warmup_epochs else 1.0
        ce = self.cross_entropy(logits, y)
        if self.standardize:
            dkd = dkd_loss(standardize(logits), standardize(teacher), y, p.alpha, p.beta, self.cfg.temperature)
        else:
            dkd = dkd_loss(logits, teacher, y, p.alpha, p.beta, self.cfg.temperature)
        return logits, ce + ramp * dkd, {"ce": ce.detach(), "dkd": dkd.detach()}
