"""``feature_mse``: feature-map regression (MSE through a learned regressor) plus cross-entropy,
on the last stage by default. ``regressor_kernel: 3`` and ``regressor_batch_norm: false`` give the
regressor of PyTorch's knowledge-distillation tutorial (a 3x3 convolution, no normalisation)."""

from typing import Literal

from pydantic import Field
from torch import nn

from kdpipe.methods.common.base import register_method
from kdpipe.methods.common.feature_base import FeatureMethod, FeatureParams
from kdpipe.methods.common.features import hint_loss, regressor


class FeatureMSEParams(FeatureParams):
    weight: float = Field(1.0, ge=0)
    regressor_kernel: Literal[1, 3] = 1
    regressor_batch_norm: bool = True


@register_method("feature_mse")
class FeatureMSE(FeatureMethod):
    stages = (3,)
    Params = FeatureMSEParams

    def build_parts(self):
        p = self.params
        self.regressors = nn.ModuleList(
            regressor(s[0], t[0], p.regressor_kernel, p.regressor_batch_norm) for s, t in zip(self.s_shapes, self.t_shapes)
        )

    def feature_loss(self, batch):
        pairs = zip(self.regressors, self.s_tap.features(), self.t_tap.features())
        return sum(hint_loss(reg(s), t) for reg, s, t in pairs)
