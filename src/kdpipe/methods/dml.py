"""``dml``: deep mutual learning (Zhang et al., 2018): the student and ``peers - 1`` other
networks train together from scratch, each with cross-entropy plus the KL divergence towards
the others' predictions; no pretrained teacher. Only the student (peer 0) is kept."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator
from torch import nn

from kdpipe.methods.common.base import Method, register_method
from kdpipe.methods.common.losses import kd_divergence


class DMLParams(BaseModel):
    model_config = ConfigDict(extra="forbid")

    peers: int = Field(2, ge=2, description="networks in the cohort, the student included")
    peer_arch: str | None = Field(None, description="architecture of the other peers (default: the student's)")
    temperature: float = Field(1.0, gt=0)

    @field_validator("peer_arch")
    @classmethod
    def _known_arch(cls, v: str | None) -> str | None:
        from kdpipe.config import known_architecture

        return v if v is None else known_architecture(v)


@register_method("dml")
class DeepMutualLearning(Method):
    needs_teacher = False
    Params = DMLParams

    def setup(self):
        build = self.context.build_network
        if build is None:
            raise ValueError("dml needs a way to build its peers")
        arch = self.params.peer_arch or self.context.student_arch
        self.peers = nn.ModuleList(build(arch) for _ in range(self.params.peers - 1))

    def forward(self, batch):
        x, y = batch.images, batch.labels
        outputs = [self.student(x)] + [peer(x) for peer in self.peers]
        total, ce0, kl0 = 0.0, None, None
        for i, logits in enumerate(outputs):
            others = [o.detach() for j, o in enumerate(outputs) if j != i]
            ce = self.cross_entropy(logits, y)
            kl = sum(kd_divergence(logits, o, self.params.temperature) for o in others) / len(others)
            total = total + ce + kl
            if i == 0:
                ce0, kl0 = ce, kl
        return outputs[0], total, {"ce": ce0.detach(), "kl": kl0.detach()}
