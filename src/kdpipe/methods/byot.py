"""``byot``: be your own teacher (Zhang et al., 2019). Auxiliary classifiers on intermediate
blocks learn from the labels, from the network's own final predictions (KD) and from its final
pooled features (L2 hint); the deepest classifier teaches the shallow ones. No external
teacher. The heads train with the student and are dropped with the method."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from kdpipe.methods.common.base import Method, register_method
from kdpipe.methods.common.features import FeatureTap, default_stages, penultimate, probe_shapes
from kdpipe.methods.common.losses import kd_divergence


class BYOTParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    alpha: float = Field(0.5, ge=0, le=1, description="KD share of each head's loss")
    temperature: float = Field(3.0, gt=0)
    feature_weight: float = Field(0.03, ge=0, description="L2 hint towards the final features")
    layers: list[str] | None = Field(None, description="blocks that get a head (default: the first three stages)")


def head(in_channels: int, width: int, num_classes: int) -> nn.ModuleDict:
    return nn.ModuleDict(
        {
            "bottleneck": nn.Sequential(
                nn.Conv2d(in_channels, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True)
            ),
            "fc": nn.Linear(width, num_classes),
        }
    )


@register_method("byot")
class BeYourOwnTeacher(Method):
    needs_teacher = False
    Params = BYOTParams

    def setup(self):
        student = self.student
        where = f"{self.context.where}.byot.layers"
        layers = self.params.layers or default_stages(self.context.student_arch or "")[:3]
        self.tap = FeatureTap(student, layers, where, embedding=True)
        shapes = probe_shapes(student, self.tap, self.context.input_shape)
        final = penultimate(student)
        self.heads = nn.ModuleList(head(s[0], final.in_features, final.out_features) for s in shapes)

    def forward(self, batch):
        x, y = batch.images, batch.labels
        logits = self.student(x)
        final_feat = self.tap.embedding().detach().float()
        final_logits = logits.detach()
        p = self.params
        ce = self.cross_entropy(logits, y)
        total = ce
        aux = torch.zeros((), device=logits.device)
        for part, feat in zip(self.heads, self.tap.features()):
            pooled = F.adaptive_avg_pool2d(part["bottleneck"](feat), 1).flatten(1)
            out = part["fc"](pooled)
            loss = (1 - p.alpha) * self.cross_entropy(out, y) + p.alpha * kd_divergence(out, final_logits, p.temperature)
            loss = loss + p.feature_weight * F.mse_loss(pooled.float(), final_feat)
            aux = aux + loss
        return logits, total + aux, {"ce": ce.detach(), "heads": aux.detach()}

    def close(self) -> None:
        self.tap.remove()
