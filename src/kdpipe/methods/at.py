"""``at``: attention transfer (Zagoruyko & Komodakis, 2017).

The attention map of a feature map is the channel mean of its squared activations, flattened
and L2-normalised; the term is the mean squared difference of student and teacher maps, summed
over the paired layers. Channel counts may differ; spatial sizes are pooled to match.
"""

import torch
import torch.nn.functional as F
from pydantic import Field

from kdpipe.methods.common.base import register_method
from kdpipe.methods.common.feature_base import FeatureMethod, FeatureParams
from kdpipe.methods.common.features import match_spatial


class ATParams(FeatureParams):
    weight: float = Field(1000.0, ge=0, description="beta of the paper (it halves it: beta/2 = 500)")
    p: float = Field(2.0, gt=0)


def attention_map(feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    return F.normalize(feat.float().abs().pow(p).mean(1).flatten(1), dim=1)


def at_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    s, t = match_spatial(student_feat, teacher_feat)
    return (attention_map(s, p) - attention_map(t, p)).pow(2).mean()


@register_method("at")
class AttentionTransfer(FeatureMethod):
    stages = (0, 1, 2, 3)
    Params = ATParams

    def feature_loss(self, batch):
        pairs = zip(self.s_tap.features(), self.t_tap.features())
        return sum(at_loss(s, t, self.params.p) for s, t in pairs) / 2
