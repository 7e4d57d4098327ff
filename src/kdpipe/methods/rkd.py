"""``rkd``: relational KD (Park et al., 2019): distance-wise and angle-wise relations between the
samples of a batch in the embedding spaces (the classifier's inputs), plus cross-entropy.
Relations are compared, not embeddings, so the widths may differ."""

import torch
import torch.nn.functional as F
from pydantic import Field

from kdpipe.methods.common.base import register_method
from kdpipe.methods.common.feature_base import FeatureMethod, FeatureParams


class RKDParams(FeatureParams):
    weight: float = Field(1.0, ge=0)
    distance_weight: float = Field(25.0, ge=0)
    angle_weight: float = Field(50.0, ge=0)


def _normalised_distances(e: torch.Tensor) -> torch.Tensor:
    d = torch.cdist(e, e)
    return d / d[d > 0].mean().clamp_min(1e-12)


def rkd_distance(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        t = _normalised_distances(teacher.float())
    return F.smooth_l1_loss(_normalised_distances(student.float()), t)


def _angles(e: torch.Tensor) -> torch.Tensor:
    diff = F.normalize(e.unsqueeze(0) - e.unsqueeze(1), p=2, dim=2)
    return torch.bmm(diff, diff.transpose(1, 2)).flatten()


def rkd_angle(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        t = _angles(teacher.float())
    return F.smooth_l1_loss(_angles(student.float()), t)


@register_method("rkd")
class RelationalKD(FeatureMethod):
    uses_embedding = True
    Params = RKDParams

    def feature_loss(self, batch):
        s, t = self.s_tap.embedding(), self.t_tap.embedding()
        p = self.params
        return p.distance_weight * rkd_distance(s, t) + p.angle_weight * rkd_angle(s, t)
