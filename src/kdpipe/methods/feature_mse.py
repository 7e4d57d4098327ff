"""``feature_mse``: feature-map regression (MSE through a learned regressor) plus cross-entropy,
on the last stage by default."""

from pydantic import Field
from torch import nn

from kdpipe.methods.common.base import register_method
from kdpipe.methods.common.feature_base import FeatureMethod, FeatureParams
from kdpipe.methods.common.features import hint_loss, regressor


class FeatureMSEParams(FeatureParams):
    weight: float = Field(1.0, ge=0)


@register_method("feature_mse")
class FeatureMSE(FeatureMethod):
    stages = (3,)
    Params = FeatureMSEParams

    def build_parts(self):
        self.regressors = nn.ModuleList(regressor(s[0], t[0]) for s, t in zip(self.s_shapes, self.t_shapes))

    def feature_loss(self, batch):
        pairs = zip(self.regressors, self.s_tap.features(), self.t_tap.features())
        return sum(hint_loss(reg(s), t) for reg, s, t in pairs)
