"""Every method's loss on hand-checkable cases."""

import math

import pytest
import torch

from kdpipe.methods.at import at_loss, attention_map
from kdpipe.methods.common.features import hint_loss
from kdpipe.methods.cosine import cosine_loss
from kdpipe.methods.dkd import dkd_loss
from kdpipe.methods.pkt import pkt_loss
from kdpipe.methods.rkd import rkd_angle, rkd_distance
from kdpipe.methods.sp import sp_loss

torch.manual_seed(0)
FEAT = torch.randn(4, 8, 4, 4)
EMB = torch.randn(6, 16)


@pytest.mark.parametrize(
    "loss,a",
    [(at_loss, FEAT), (hint_loss, FEAT), (sp_loss, FEAT), (cosine_loss, EMB), (pkt_loss, EMB),
     (rkd_distance, EMB), (rkd_angle, EMB)],
    ids=["at", "hint", "sp", "cosine", "pkt", "rkd_distance", "rkd_angle"],
)
def test_zero_when_student_equals_teacher(loss, a):
    assert loss(a, a.clone()).item() == pytest.approx(0.0, abs=1e-6)


def test_attention_map_by_hand():
    # one image, one channel, two pixels: maps are normalize([1, 4]) and normalize([4, 1])
    s = torch.tensor([[[[1.0, 2.0]]]])
    t = torch.tensor([[[[2.0, 1.0]]]])
    n = math.sqrt(17)
    expected = ((1 / n - 4 / n) ** 2 + (4 / n - 1 / n) ** 2) / 2
    assert at_loss(s, t).item() == pytest.approx(expected, rel=1e-6)
    # attention ignores the channel count and pools mismatched sizes
    assert attention_map(torch.ones(2, 3, 4, 4)).shape == (2, 16)
    assert at_loss(torch.randn(2, 3, 4, 4), torch.randn(2, 7, 2, 2)).ndim == 0


def test_cosine_by_hand():
    s = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    t = torch.tensor([[0.0, 1.0], [-1.0, -1.0]])
    assert cosine_loss(s, t).item() == pytest.approx((1.0 + 2.0) / 2)


def test_relations_ignore_scale_and_width():
    # relations are compared, so a scaled teacher, or a teacher in another width, can match exactly
    assert rkd_distance(EMB, 3 * EMB).item() == pytest.approx(0.0, abs=1e-6)
    assert rkd_angle(EMB, 3 * EMB).item() == pytest.approx(0.0, abs=1e-6)
    assert pkt_loss(EMB, 3 * EMB).item() == pytest.approx(0.0, abs=1e-6)
    wide = torch.cat([EMB, torch.zeros(6, 8)], dim=1)
    assert rkd_distance(EMB, wide).item() == pytest.approx(0.0, abs=1e-6)
    assert rkd_distance(EMB, torch.randn(6, 16)).item() > 0


def test_sp_by_hand():
    # two samples with orthogonal features in the student, identical in the teacher
    s = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    # student G rows: [1,0],[0,1]; teacher rows normalised: [1,1]/sqrt2 each
    r = 1 / math.sqrt(2)
    expected = ((1 - r) ** 2 + r**2 + r**2 + (1 - r) ** 2) / 4
    assert sp_loss(s, t).item() == pytest.approx(expected, rel=1e-6)


def hand_dkd(s, t, label, alpha, beta, temp):
    ps = [math.exp(v / temp) for v in s]
    pt = [math.exp(v / temp) for v in t]
    ps = [v / sum(ps) for v in ps]
    pt = [v / sum(pt) for v in pt]
    bs, bt = [ps[label], 1 - ps[label]], [pt[label], 1 - pt[label]]
    tckd = sum(a * math.log(a / b) for a, b in zip(bt, bs))
    ns = [v for i, v in enumerate(ps) if i != label]
    nt = [v for i, v in enumerate(pt) if i != label]
    ns = [v / sum(ns) for v in ns]
    nt = [v / sum(nt) for v in nt]
    nckd = sum(a * math.log(a / b) for a, b in zip(nt, ns))
    return (alpha * tckd + beta * nckd) * temp**2


def test_dkd_by_hand_and_zero_at_equality():
    s, t = [1.0, 0.5, -1.0, 2.0], [0.2, 2.0, 0.1, -0.5]
    got = dkd_loss(torch.tensor([s]), torch.tensor([t]), torch.tensor([1]), 1.0, 8.0, 2.0).item()
    assert got == pytest.approx(hand_dkd(s, t, 1, 1.0, 8.0, 2.0), rel=1e-5)
    z = torch.randn(5, 4)
    assert dkd_loss(z, z.clone(), torch.arange(5) % 4, 1.0, 8.0, 4.0).item() == pytest.approx(0.0, abs=1e-5)
