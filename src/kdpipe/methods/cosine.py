"""``cosine``: cosine-embedding loss between hidden representations plus cross-entropy.

By default the representations are the pooled embeddings (the classifier's inputs), the
student's through a learned linear projection when the widths differ. With ``student_layers``
and ``teacher_layers`` (one each) they are those layers' outputs, flattened; ``match: avg_pool``
averages the wider teacher vector down to the student's width instead of learning a projection,
as PyTorch's knowledge-distillation tutorial does (2048 -> 1024 for its two CNNs).
"""

from math import prod
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdpipe.errors import ConfigError
from kdpipe.methods.common.base import register_method
from kdpipe.methods.common.feature_base import FeatureMethod, FeatureParams


class CosineParams(FeatureParams):
    weight: float = Field(1.0, ge=0)
    match: Literal["linear", "avg_pool"] = Field(
        "linear", description="widths differ: a learned projection of the student's vector, or the teacher's "
        "averaged down to the student's width (its width a multiple of the student's)",
    )


def cosine_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """Mean of 1 - cos(s, t): what torch's CosineEmbeddingLoss gives for target +1."""
    target = torch.ones(len(student_emb), device=student_emb.device)
    return F.cosine_embedding_loss(student_emb.float(), teacher_emb.float(), target)


@register_method("cosine")
class CosineEmbedding(FeatureMethod):
    uses_embedding = True
    Params = CosineParams

    def build_parts(self):
        self.on_layers = bool(self.s_shapes)
        if self.on_layers and len(self.s_shapes) != 1:
            raise ConfigError(f"{self.context.where}.cosine: name one layer each in student_layers and teacher_layers")
        s_dim, t_dim = (prod(self.s_shapes[0]), prod(self.t_shapes[0])) if self.on_layers else (self.s_dim, self.t_dim)
        self.pool = 1
        self.projection = nn.Identity()
        if s_dim != t_dim and self.params.match == "linear":
            self.projection = nn.Linear(s_dim, t_dim)
        elif s_dim != t_dim:
            if t_dim % s_dim:
                raise ConfigError(f"{self.context.where}.cosine.match: avg_pool needs the teacher's width ({t_dim}) "
                                  f"to be a multiple of the student's ({s_dim}); use match: linear")
            self.pool = t_dim // s_dim

    def vectors(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.on_layers:
            return self.s_tap.features()[0].flatten(1), self.t_tap.features()[0].flatten(1)
        return self.s_tap.embedding(), self.t_tap.embedding()

    def feature_loss(self, batch):
        student, teacher = self.vectors()
        if self.pool > 1:
            teacher = F.avg_pool1d(teacher.unsqueeze(1), self.pool).squeeze(1)
        return cosine_loss(self.projection(student), teacher)
