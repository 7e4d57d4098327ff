"""``fitnets``: hint regression (Romero et al., 2015).

A learned 1x1-convolution regressor maps the student's hint layer to the teacher's; the loss is
the link's KD loss plus ``weight`` times the MSE between regressed and teacher features. With
``hint_epochs > 0`` the first epochs train on the hint alone (the paper's stage 1), then KD.
"""

from __future__ import annotations

from pydantic import Field
from torch import nn

from kdpipe.methods.common.base import register_method
from kdpipe.methods.common.feature_base import FeatureMethod, FeatureParams
from kdpipe.methods.common.features import hint_loss, regressor


class FitNetsParams(FeatureParams):
    weight: float = Field(1.0, ge=0)
    with_kd: bool = True
    hint_epochs: int = Field(0, ge=0, description="epochs of hint-only training before KD (stage 1)")


@register_method("fitnets")
class FitNets(FeatureMethod):
    stages = (1,)  # a middle layer, as in the paper
    Params = FitNetsParams

    def build_parts(self):
        self.regressors = nn.ModuleList(
            regressor(s[0], t[0]) for s, t in zip(self.s_shapes, self.t_shapes)
        )

    def feature_loss(self, batch):
        pairs = zip(self.regressors, self.s_tap.features(), self.t_tap.features())
        return sum(hint_loss(reg(s), t) for reg, s, t in pairs)

    def combine(self, base, feat):
        if self.epoch <= self.params.hint_epochs:  # stage 1: the hint alone
            return self.params.weight * feat
        return base + self.params.weight * feat
