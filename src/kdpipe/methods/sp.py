"""``sp``: similarity-preserving KD (Tung & Mori, 2019): the batch's pairwise similarity matrices
of a feature map (rows L2-normalised) should agree, plus cross-entropy."""

import torch
import torch.nn.functional as F
from pydantic import Field

from kdpipe.methods.common.base import register_method
from kdpipe.methods.common.feature_base import FeatureMethod, FeatureParams


class SPParams(FeatureParams):
    weight: float = Field(3000.0, ge=0, description="gamma of the paper")


def similarity(feat: torch.Tensor) -> torch.Tensor:
    f = feat.float().flatten(1)
    return F.normalize(f @ f.t(), dim=1)


def sp_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor) -> torch.Tensor:
    b = student_feat.shape[0]
    return (similarity(student_feat) - similarity(teacher_feat)).pow(2).sum() / (b * b)


@register_method("sp")
class SimilarityPreserving(FeatureMethod):
    stages = (3,)
    Params = SPParams

    def feature_loss(self, batch):
        return sum(sp_loss(s, t) for s, t in zip(self.s_tap.features(), self.t_tap.features()))
