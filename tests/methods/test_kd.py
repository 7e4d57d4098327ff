import math

import pytest
import torch
import torch.nn.functional as F

from kdpipe.config import StudentDistillConfig
from kdpipe.methods import METHODS, Batch, MethodContext, build_method
from kdpipe.methods.kd import kd_divergence, kd_loss
from kdpipe.models.registry import build_model


def hand_kd(s, t, temperature):
    """T^2 * KL(p_t || p_s) for one sample, written out from the definition."""
    es = [math.exp(v / temperature) for v in s]
    et = [math.exp(v / temperature) for v in t]
    ps = [v / sum(es) for v in es]
    pt = [v / sum(et) for v in et]
    return temperature**2 * sum(a * math.log(a / b) for a, b in zip(pt, ps))


def test_matches_hand_computed_value():
    s, t = [1.0, 2.0, 0.5], [0.2, 3.0, -1.0]
    got = kd_divergence(torch.tensor([s]), torch.tensor([t]), 2.0).item()
    assert got == pytest.approx(hand_kd(s, t, 2.0), rel=1e-6)


def test_batch_mean_and_total_weighting():
    torch.manual_seed(0)
    s, t = torch.randn(4, 5), torch.randn(4, 5)
    y = torch.tensor([0, 1, 2, 3])
    per_sample = [hand_kd(s[i].tolist(), t[i].tolist(), 3.0) for i in range(4)]
    total, kd, ce = kd_loss(s, t, y, temperature=3.0, alpha=0.7)
    assert kd.item() == pytest.approx(sum(per_sample) / 4, rel=1e-5)
    assert ce.item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    assert total.item() == pytest.approx(0.7 * kd.item() + 0.3 * ce.item(), rel=1e-6)


def test_alpha_limits():
    torch.manual_seed(1)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    total0, _, ce = kd_loss(s, t, y, 4.0, alpha=0.0)
    total1, kd, _ = kd_loss(s, t, y, 4.0, alpha=1.0)
    assert total0.item() == pytest.approx(ce.item())
    assert total1.item() == pytest.approx(kd.item())


def test_zero_when_student_equals_teacher():
    z = torch.randn(6, 10)
    assert kd_divergence(z, z.clone(), 4.0).item() == pytest.approx(0.0, abs=1e-6)
    # a constant shift of all logits leaves the softmax unchanged
    assert kd_divergence(z + 3.0, z, 4.0).item() == pytest.approx(0.0, abs=1e-5)


def test_high_temperature_limit_is_logit_matching():
    # Hinton et al.: as T grows, T^2 KL -> (1/2K) sum_i (d_i - mean d)^2 with d = student - teacher
    torch.manual_seed(2)
    s, t = torch.randn(3, 7, dtype=torch.float64), torch.randn(3, 7, dtype=torch.float64)
    d = s - t
    d = d - d.mean(dim=1, keepdim=True)
    expected = (d.pow(2).sum(dim=1) / (2 * 7)).mean().item()
    got = kd_divergence(s, t, 1000.0).item()
    assert got == pytest.approx(expected, rel=1e-3)


def test_gradient_pulls_student_towards_teacher():
    t = torch.tensor([[3.0, 0.0, -3.0]])
    s = torch.zeros(1, 3, requires_grad=True)
    kd_divergence(s, t, 2.0).backward()
    # descending the gradient raises the logit the teacher prefers and lowers the other
    assert s.grad[0, 0] < 0 < s.grad[0, 2]


def test_kd_method_needs_teacher_and_keeps_it_out_of_parameters():
    student, teacher = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    with pytest.raises(ValueError, match="needs a teacher"):
        build_method("kd", student, None)

    class Cfg:
        temperature, alpha = 4.0, 0.5

    method = build_method("kd", student, teacher, Cfg())
    assert {id(p) for p in method.parameters()} == {id(p) for p in student.parameters()}
    logits, loss, terms = method(Batch(torch.randn(5, 4), torch.randint(0, 3, (5,))))
    loss.backward()
    assert logits.shape == (5, 3) and set(terms) == {"kd", "ce"}
    assert teacher.weight.grad is None and student.weight.grad is not None
    assert not teacher.training


def test_registry_has_baseline_and_kd():
    assert {"none", "kd"} <= set(METHODS)
    assert not METHODS["none"].needs_teacher


def test_teacher_runs_in_chunks_with_the_same_logits():
    torch.manual_seed(0)
    teacher = build_model("resnet18", 10, 1, 8).eval()
    calls = []
    teacher.register_forward_pre_hook(lambda _, args: calls.append(len(args[0])))
    x = torch.randn(8, 1, 8, 8)
    whole_method = build_method("kd", build_model("resnet18", 10, 1, 8), teacher, StudentDistillConfig(method="kd"))
    whole = whole_method.teacher.logits(Batch(x, None))
    chunked_method = build_method("kd", build_model("resnet18", 10, 1, 8), teacher, StudentDistillConfig(method="kd"),
                                  context=MethodContext(teacher_chunk=3))
    chunked = chunked_method.teacher.logits(Batch(x, None))
    assert calls == [8, 3, 3, 2]
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)  # eval mode: per-image results
