"""crd: the contrastive loss by hand, the memory banks' update, and clear refusals."""

import math

import pytest
import torch
import torch.nn.functional as F

from kdpipe.config import StudentDistillConfig
from kdpipe.errors import ConfigError
from kdpipe.methods import Batch, MethodContext, build_method
from kdpipe.methods.crd import info_nce
from kdpipe.models.registry import build_model


def make(num_train=32, **section):
    torch.manual_seed(0)
    student, teacher = build_model("resnet18", 10, 1, 8), build_model("mobilenet_v2", 10, 1, 8).eval()
    cfg = StudentDistillConfig(method="crd", crd=section)
    ctx = MethodContext(input_shape=(1, 8, 8), student_arch="resnet18", teacher_arch="mobilenet_v2", num_train=num_train)
    return build_method("crd", student, teacher, cfg, 0.0, ctx)


def test_info_nce_by_hand():
    bank = torch.eye(4)
    anchor = bank[[0, 1]]  # each anchor is its own positive; negatives 2, 3 are orthogonal to it
    tau, k = 0.5, 2
    got = info_nce(anchor, bank, torch.tensor([0, 1]), torch.tensor([2, 3]), tau)
    assert got == pytest.approx(math.log(1 + k * math.exp(-1 / tau)), rel=1e-6)
    # the anchor pointing away from its positive and at a negative costs more
    worse = info_nce(bank[[2, 3]], bank, torch.tensor([0, 1]), torch.tensor([2, 3]), tau)
    assert worse > got


def test_banks_move_towards_the_batch_only_in_training():
    method = make(momentum=0.5)
    idx = torch.tensor([3, 7, 11, 5])
    before_s, before_t = method.memory_s.clone(), method.memory_t.clone()
    method.train()
    method(Batch(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]), idx))
    s = F.normalize(method.embed_s(method.s_tap.embedding().float()), dim=1).detach()
    expected = F.normalize(0.5 * before_s[idx] + 0.5 * s, dim=1)
    torch.testing.assert_close(method.memory_s[idx], expected)
    untouched = torch.ones(len(before_s), dtype=torch.bool)
    untouched[idx] = False
    assert torch.equal(method.memory_s[untouched], before_s[untouched])
    assert torch.equal(method.memory_t[untouched], before_t[untouched])
    assert not torch.equal(method.memory_t[idx], before_t[idx])
    # banks are buffers: saved with the method's state (resume), never parameters of the student
    assert "memory_s" in method.state_dict() and "memory_s" not in dict(method.named_parameters())
    frozen = method.memory_s.clone()
    method.eval()
    method(Batch(torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3]), idx))
    assert torch.equal(method.memory_s, frozen)


def test_both_heads_and_the_student_learn_from_the_contrastive_term():
    method = make(negatives=1000)  # capped at num_train - 1
    method.train()
    x = torch.randn(4, 1, 8, 8)
    batch = Batch(x, torch.arange(4), torch.arange(4))
    method.teacher.logits(batch)  # fill the taps, as the forward does
    method.student(x)
    crd = method.feature_loss(batch)  # the contrastive term alone, without cross-entropy
    crd.backward()
    assert crd > 0
    assert method.embed_s.weight.grad.abs().sum() > 0 and method.embed_t.weight.grad.abs().sum() > 0
    assert method.student.conv1.weight.grad.abs().sum() > 0
    assert all(p.grad is None for p in method.teacher.network.parameters())
    heads = (*method.embed_s.parameters(), *method.embed_t.parameters())
    assert method.extra_parameters() == sum(p.numel() for p in heads)  # banks are buffers, not parameters


def test_refusals_are_clear():
    with pytest.raises(ConfigError, match=r"distill\.crd: needs the training set's size"):
        make(num_train=None)
    method = make()
    method.train()
    with pytest.raises(RuntimeError, match="no sample indices"):
        method(Batch(torch.randn(2, 1, 8, 8), torch.tensor([0, 1])))
    with pytest.raises(ConfigError, match="distill.crd.nce_temperature"):
        make(nce_temperature=0)
