"""Shared machinery of the feature-based methods: taps on both networks, shape probing, and the
loss ``base + weight * feature_term``, where ``base`` is cross-entropy, or the link's Hinton KD
loss when the method's ``with_kd`` is true."""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import BaseModel, ConfigDict, Field

from kdpipe.errors import ConfigError
from kdpipe.methods.common.base import Method
from kdpipe.methods.common.features import FeatureTap, default_stages, probe_shapes
from kdpipe.methods.common.losses import kd_loss


class FeatureParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    weight: float = Field(1.0, ge=0, description="weight of the feature term")
    with_kd: bool = Field(False, description="add Hinton KD (distill.temperature/alpha) instead of plain CE")
    student_layers: list[str] | None = Field(None, description="module names; default: the method's stages")
    teacher_layers: list[str] | None = None


class FeatureMethod(Method):
    stages: ClassVar[tuple[int, ...]] = ()  # which of the four default stages to tap
    uses_embedding: ClassVar[bool] = False  # also tap the classifier's input
    Params = FeatureParams

    def setup(self):
        student, teacher = self.student, self.teacher.network
        p, ctx = self.params, self.context
        where = f"{ctx.where}.{self.name}"
        s_layers = p.student_layers or self._defaults(ctx.student_arch, where)
        t_layers = p.teacher_layers or self._defaults(ctx.teacher_arch, where)
        if len(s_layers) != len(t_layers):
            raise ConfigError(f"{where}: student_layers ({len(s_layers)}) and teacher_layers ({len(t_layers)}) must pair up")
        self.s_tap = FeatureTap(student, s_layers, f"{where}.student_layers", self.uses_embedding)
        self.t_tap = FeatureTap(teacher, t_layers, f"{where}.teacher_layers", self.uses_embedding)
        if ctx.input_shape is None:
            raise ValueError(f"{self.name} needs the input shape to size its parts")
        self.s_shapes = probe_shapes(student, self.s_tap, ctx.input_shape)
        self.t_shapes = probe_shapes(teacher, self.t_tap, ctx.input_shape)
        self.s_dim = self.s_tap.embedding().shape[1] if self.uses_embedding else None
        self.t_dim = self.t_tap.embedding().shape[1] if self.uses_embedding else None
        self.build_parts()

    def _defaults(self, arch: str | None, where: str) -> list[str]:
        if arch is None:
            raise ConfigError(f"{where}: set student_layers and teacher_layers")
        stages = default_stages(arch)
        return [stages[i] for i in self.stages]

    def build_parts(self) -> None:
        """Create trainable parts (regressors, projections) from the probed shapes."""

    def feature_loss(self, batch) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, batch):
        x, y = batch.images, batch.labels
        teacher = self.teacher.logits(batch)  # fills the teacher taps
        logits = self.student(x)  # fills the student taps
        p = self.params
        if p.with_kd:
            base, kd, ce = kd_loss(logits, teacher, y, self.cfg.temperature, self.cfg.alpha, self.label_smoothing)
            terms = {"kd": kd.detach(), "ce": ce.detach()}
        else:
            base = self.cross_entropy(logits, y)
            terms = {"ce": base.detach()}
        feat = self.feature_loss(batch)
        terms[self.name] = feat.detach()
        return logits, self.combine(base, feat), terms

    def combine(self, base: torch.Tensor, feat: torch.Tensor) -> torch.Tensor:
        return base + self.params.weight * feat

    def close(self) -> None:
        self.s_tap.remove()
        self.t_tap.remove()
