"""``crd``: contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020).

Student and teacher embeddings (the classifiers' inputs) are projected by two learned linear
heads to ``feat_dim`` and L2-normalised. Two memory banks hold one momentum-averaged vector per
training image: the student's and the teacher's. For each image, its own entry in the *other*
network's bank is the positive and ``negatives`` random entries are the negatives; the loss is
the InfoNCE (softmax) form of the CRD objective, in both directions:

    crd = CE([s·M_t[i], s·M_t[n_1..n_K]] / τ, 0) + CE([t·M_s[i], t·M_s[n_1..n_K]] / τ, 0)

After each step the banks move towards the batch's embeddings (``momentum``), as in the
authors' RepDistiller code. Differences from that code, on purpose: the negatives are drawn
once per step and shared by the batch (one K x d gather and a GEMM instead of a B x K x d
gather: the same estimator, far less memory traffic), and the softmax form replaces the NCE
form with its estimated partition constant (RepDistiller offers both).

The banks need each image's index in the training set: the trainer passes it
(``needs_indices``). Under DDP the batch's embeddings are gathered so every process updates its
banks identically. Heads and banks are the method's own: never exported with the student.
"""

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from kdpipe.errors import ConfigError
from kdpipe.methods.common.base import register_method
from kdpipe.methods.common.feature_base import FeatureMethod, FeatureParams


class CRDParams(FeatureParams):
    weight: float = Field(0.8, ge=0, description="beta, the weight of the contrastive term (paper: 0.8)")
    feat_dim: int = Field(128, ge=1, description="width of the contrastive embedding")
    negatives: int = Field(
        4096, ge=1, description="negatives per step, drawn uniformly with replacement as in RepDistiller (at most N - 1)"
    )
    nce_temperature: float = Field(0.07, gt=0)
    momentum: float = Field(0.5, ge=0, lt=1, description="memory bank update: m * old + (1 - m) * new")


def info_nce(anchor: torch.Tensor, bank: torch.Tensor, idx: torch.Tensor, neg: torch.Tensor,
             temperature: float) -> torch.Tensor:
    """Softmax contrastive loss of ``anchor`` rows against their own bank entries (``idx``,
    the positives) and the shared bank entries ``neg`` (the negatives)."""
    pos = (anchor * bank[idx]).sum(1, keepdim=True)
    logits = torch.cat([pos, anchor @ bank[neg].t()], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(anchor), dtype=torch.long, device=anchor.device))


def _gathered(v: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(v) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, v.contiguous())
    return torch.cat(parts)


@register_method("crd")
class ContrastiveRD(FeatureMethod):
    uses_embedding = True
    needs_indices = True
    ddp_local_buffers = ("memory_s", "memory_t")  # kept equal by the all-gather, not by broadcasts
    Params = CRDParams

    def build_parts(self):
        p, n = self.params, self.context.num_train
        if not n or n < 2:
            raise ConfigError(
                f"{self.context.where}.crd: needs the training set's size for its memory banks "
                f"(got {n}); crd is available in the training stages and the method comparison"
            )
        self.embed_s = nn.Linear(self.s_dim, p.feat_dim)
        self.embed_t = nn.Linear(self.t_dim, p.feat_dim)
        # banks start as random unit vectors (seeded by the run's seed, like the networks)
        self.register_buffer("memory_s", F.normalize(torch.randn(n, p.feat_dim), dim=1))
        self.register_buffer("memory_t", F.normalize(torch.randn(n, p.feat_dim), dim=1))

    def feature_loss(self, batch):
        idx = batch.indices
        if idx is None:
            raise RuntimeError("crd: the batch has no sample indices (crd declares needs_indices)")
        p = self.params
        with torch.autocast(self.memory_s.device.type, enabled=False):  # unit vectors over τ = 0.07: keep fp32
            s = F.normalize(self.embed_s(self.s_tap.embedding().float()), dim=1)
            t = F.normalize(self.embed_t(self.t_tap.embedding().float()), dim=1)
            n = len(self.memory_s)
            neg = torch.randint(0, n, (min(p.negatives, n - 1),), device=s.device)
            loss = info_nce(s, self.memory_t, idx, neg, p.nce_temperature)
            loss = loss + info_nce(t, self.memory_s, idx, neg, p.nce_temperature)
        if self.training:
            self._update_banks(idx, s.detach(), t.detach())
        return loss

    @torch.no_grad()
    def _update_banks(self, idx: torch.Tensor, s: torch.Tensor, t: torch.Tensor) -> None:
        if dist.is_available() and dist.is_initialized():  # every process sees the whole batch
            idx, s, t = _gathered(idx), _gathered(s), _gathered(t)
        m = self.params.momentum
        for bank, v in ((self.memory_s, s), (self.memory_t, t)):
            bank[idx] = F.normalize(bank[idx] * m + v * (1 - m), dim=1)
