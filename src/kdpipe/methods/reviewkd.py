"""``reviewkd``: knowledge review (Chen et al., "Distilling Knowledge via Knowledge Review",
CVPR 2021).

Each of the student's four stages is compared with the teacher's *same* stage, but through a
chain that also lets it see the student's deeper stages ("review"): attention-based fusion
(ABF) modules run from the deepest stage to the shallowest. ABF i maps student stage i to a
``mid`` width (1×1 conv + BN); except at the deepest stage, it fuses that with the previous
(deeper) ABF's fused map, upsampled (nearest) to stage i's size, by two sigmoid attention maps
computed from both (1×1 conv on their concatenation); the fused map is resized (nearest) to the
teacher's stage size, passed on to the next ABF, and mapped to the teacher's width by a 3×3
conv + BN. The outputs are compared with the teacher's stages by the hierarchical context loss
(HCL): the MSE of the full maps plus the MSEs of pyramid average-pools to 4×4, 2×2 and 1×1
(levels at least as large as the map skipped), weighted 1, 1/2, 1/4, 1/8 and normalised by the
sum of the weights used; HCL is summed over stages.

loss = CE + weight · ramp · HCL, ``weight`` 1 (mdistiller's ``REVIEWKD.LOSS_WEIGHT`` 1.0). The
ramp is mdistiller's linear warm-up ``min(epoch / WARMUP_EPOCHS, 1)`` with ``WARMUP_EPOCHS``
20 of its 240 CIFAR epochs, scaled to this run's length: ``warmup`` is the warm-up as a fraction
of the run (default 20/240), ramp = min(epoch / (warmup · epochs), 1). At 240 epochs this is
exactly the reference's schedule; a run of 12 epochs or fewer is at full weight from epoch 1;
``warmup: 0`` turns the ramp off.

Channel counts and spatial sizes come from the probed shapes of the tapped layers (the four
default stages, or ``student_layers``/``teacher_layers``), so any registered student/teacher
pair works; the ABFs' ``mid`` width is min(``max_mid_channels`` 512, the student's deepest
width), as in mdistiller. Differences from the reference: the taps are the stage outputs of
torchvision's models (after the ReLU) for both networks, where mdistiller compares the
teacher's pre-activation features, and there is no fifth level for the pooled embedding.

Reference implementations followed: dvlab-research/ReviewKD and mdistiller's ``ReviewKD``
distiller (``ABF``, ``hcl_loss``, the CIFAR settings). The code here is our own.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdpipe.methods.common.base import register_method
from kdpipe.methods.common.feature_base import FeatureMethod, FeatureParams


class ReviewKDParams(FeatureParams):
    weight: float = Field(1.0, ge=0, description="weight of the HCL term (mdistiller's REVIEWKD.LOSS_WEIGHT)")
    warmup: float = Field(
        20 / 240, ge=0, le=1, description="linear warm-up of the term, as a fraction of the run (mdistiller: 20 of 240)"
    )
    max_mid_channels: int = Field(512, ge=1, description="cap on the ABFs' common width")


def hcl_loss(student_feats, teacher_feats, levels: tuple[int, ...] = (4, 2, 1)) -> torch.Tensor:
    """Hierarchical context loss, summed over paired maps of equal shape."""
    per_stage = []
    for fs, ft in zip(student_feats, teacher_feats):
        fs, ft = fs.float(), ft.float()
        loss = F.mse_loss(fs, ft)
        weight, norm = 1.0, 1.0
        for level in levels:
            if level >= min(fs.shape[2], fs.shape[3]):
                continue
            weight /= 2
            pooled = F.mse_loss(F.adaptive_avg_pool2d(fs, level), F.adaptive_avg_pool2d(ft, level))
            loss = loss + weight * pooled
            norm += weight
        per_stage.append(loss / norm)
    return torch.stack(per_stage).sum()


class ABF(nn.Module):
    """Attention-based fusion of one student stage with the deeper stages' fused map."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, fuse: bool):
        super().__init__()
        self.reduce = nn.Sequential(nn.Conv2d(in_channels, mid_channels, 1, bias=False), nn.BatchNorm2d(mid_channels))
        self.out = nn.Sequential(
            nn.Conv2d(mid_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels)
        )
        self.attention = (
            nn.Sequential(nn.Conv2d(2 * mid_channels, 2, 1), nn.Sigmoid()) if fuse else None
        )
        nn.init.kaiming_uniform_(self.reduce[0].weight, a=1)
        nn.init.kaiming_uniform_(self.out[0].weight, a=1)

    def forward(self, x: torch.Tensor, deeper: torch.Tensor | None, out_size: tuple[int, int]):
        """(output at the teacher's width and ``out_size``, fused map for the next, shallower ABF)."""
        x = self.reduce(x)
        if self.attention is not None:
            deeper = F.interpolate(deeper, size=x.shape[2:], mode="nearest")
            a = self.attention(torch.cat([x, deeper], dim=1))
            x = x * a[:, :1] + deeper * a[:, 1:]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, size=out_size, mode="nearest")
        return self.out(x), x


@register_method("reviewkd")
class ReviewKD(FeatureMethod):
    stages = (0, 1, 2, 3)
    Params = ReviewKDParams

    def build_parts(self):
        mid = min(self.params.max_mid_channels, self.s_shapes[-1][0])
        last = len(self.s_shapes) - 1
        # abfs[i] serves stage i; the chain runs from the last (deepest) to the first
        self.abfs = nn.ModuleList(
            ABF(s[0], mid, t[0], fuse=i < last) for i, (s, t) in enumerate(zip(self.s_shapes, self.t_shapes))
        )
        self.out_sizes = [tuple(t[1:]) for t in self.t_shapes]

    def review(self, student_feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """The ABF chain's outputs, in stage order (shallowest first)."""
        outputs: list[torch.Tensor] = [None] * len(student_feats)  # type: ignore[list-item]
        fused = None
        for i in reversed(range(len(student_feats))):
            outputs[i], fused = self.abfs[i](student_feats[i], fused, self.out_sizes[i])
        return outputs

    def feature_loss(self, batch):
        return hcl_loss(self.review(self.s_tap.features()), self.t_tap.features())

    def ramp(self) -> float:
        warm = self.params.warmup * self.epochs
        return min(self.epoch / warm, 1.0) if warm > 0 else 1.0

    def combine(self, base, feat):
        return base + self.params.weight * self.ramp() * feat
