"""``cosine``: cosine-embedding loss between the pooled hidden representations (the classifier's
inputs), through a learned linear projection when the widths differ, plus cross-entropy."""

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdpipe.methods.common.base import register_method
from kdpipe.methods.common.feature_base import FeatureMethod, FeatureParams


class CosineParams(FeatureParams):
    weight: float = Field(1.0, ge=0)


def cosine_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(s, t): what torch's CosineEmbeddingLoss gives for target +1."""
    target = torch.ones(len(student_emb), device=student_emb.device)
    return F.cosine_embedding_loss(student_emb.float(), teacher_emb.float(), target)


@register_method("cosine")
class CosineEmbedding(FeatureMethod):
    uses_embedding = True
    Params = CosineParams

    def build_parts(self):
        self.projection = nn.Linear(self.s_dim, self.t_dim) if self.s_dim != self.t_dim else nn.Identity()

    def feature_loss(self, batch):
        return cosine_loss(self.projection(self.s_tap.embedding()), self.t_tap.embedding())
