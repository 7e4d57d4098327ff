"""``pkt``: probabilistic knowledge transfer (Passalis & Tefas, 2018): the batch's cosine
similarities, turned into conditional probabilities, matched with KL, plus cross-entropy."""

import torch
import torch.nn.functional as F
from pydantic import Field

from kdpipe.methods.common.base import register_method
from kdpipe.methods.common.feature_base import FeatureMethod, FeatureParams


class PKTParams(FeatureParams):
    weight: float = Field(1.0, ge=0)


def _conditional(e: torch.Tensor) -> torch.Tensor:
    e = F.normalize(e.float(), dim=1)
    sim = (e @ e.t() + 1.0) / 2.0
    return sim / sim.sum(dim=1, keepdim=True)


def pkt_loss(student: torch.Tensor, teacher: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    p_s, p_t = _conditional(student), _conditional(teacher)
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).sum(dim=1).mean()


@register_method("pkt")
class ProbabilisticKT(FeatureMethod):
    uses_embedding = True
    Params = PKTParams

    def feature_loss(self, batch):
        return pkt_loss(self.s_tap.embedding(), self.t_tap.embedding())
