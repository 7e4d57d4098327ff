"""``dist``: DIST, distillation from a stronger teacher (Huang et al., "Knowledge Distillation
from A Stronger Teacher", NeurIPS 2022).

Instead of matching probabilities exactly (KL), the student matches *relations*, measured by
the Pearson correlation ρ of softened predictions p = softmax(z/T):

- inter-class relation: for each sample, ρ between the student's and the teacher's
  distributions over the classes; term = 1 − mean over the batch;
- intra-class relation: for each class, ρ between the student's and the teacher's
  probabilities of that class over the batch; term = 1 − mean over the classes.

loss = CE(s, y) + beta · T² · inter + gamma · T² · intra

Settings (``<link>.dist``): ``beta`` 2 and ``gamma`` 2, mdistiller's CIFAR defaults (and the
paper's CIFAR-100 setting). The temperature is the link's ``distill.temperature`` (default 4,
the same value as mdistiller's ``DIST.TEMPERATURE`` 4 and the paper's CIFAR τ): like ``kd``,
``dkd`` and ``ctkd``, DIST reads the link's one temperature and has no second one of its own
(the authors' ImageNet code, hunto/DIST_KD, uses τ = 1 with beta = gamma = 1: set
``distill.temperature: 1`` and ``distill.dist: {beta: 1, gamma: 1}`` for that recipe). The CE
weight is 1 and ``distill.alpha`` is not used. With ``distill.logit_standardize`` both logits
are z-scored per sample before the softmax (Sun et al., 2024).

Reference implementations followed: hunto/DIST_KD (``pearson_correlation``, cosine similarity
of mean-centred rows with eps 1e-8) and mdistiller's ``DIST`` distiller (the T² scaling and the
CIFAR weights). The code here is our own.
"""

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from kdpipe.methods.common.base import Method, register_method
from kdpipe.methods.common.losses import _at_least_fp32, standardize


class DISTParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    beta: float = Field(2.0, ge=0, description="weight of the inter-class relation (per sample)")
    gamma: float = Field(2.0, ge=0, description="weight of the intra-class relation (per class)")


def pearson_rows(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation between matching rows of ``a`` and ``b`` (N, K) -> (N,)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + eps)


def inter_class_relation(p_student: torch.Tensor, p_teacher: torch.Tensor) -> torch.Tensor:
    """1 − mean over samples of ρ(student row, teacher row), each row a distribution over classes."""
    return 1.0 - pearson_rows(p_student, p_teacher).mean()


def intra_class_relation(p_student: torch.Tensor, p_teacher: torch.Tensor) -> torch.Tensor:
    """1 − mean over classes of ρ(student column, teacher column), each column one class over the batch."""
    return inter_class_relation(p_student.t(), p_teacher.t())


def dist_terms(student_logits, teacher_logits, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(inter, intra) of softmax(z/T), each already scaled by T², in fp32 or wider."""
    p_s = F.softmax(_at_least_fp32(student_logits) / temperature, dim=1)
    p_t = F.softmax(_at_least_fp32(teacher_logits) / temperature, dim=1)
    t2 = temperature * temperature
    return t2 * inter_class_relation(p_s, p_t), t2 * intra_class_relation(p_s, p_t)


@register_method("dist")
class DIST(Method):
    logits_only = True
    standardizes_logits = True

    Params = DISTParams

    def forward(self, batch):
        x, y = batch.images, batch.labels
        teacher = self.teacher.logits(batch)
        logits = self.student(x)
        s, t = (standardize(logits), standardize(teacher)) if self.standardize else (logits, teacher)
        inter, intra = dist_terms(s, t, self.cfg.temperature)
        ce = self.cross_entropy(logits, y)
        p = self.params
        loss = ce + p.beta * inter + p.gamma * intra
        return logits, loss, {"ce": ce.detach(), "inter": inter.detach(), "intra": intra.detach()}
