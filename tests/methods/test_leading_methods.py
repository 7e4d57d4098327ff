"""DIST, ReviewKD, CTKD and logit standardisation on hand-checkable cases: expected values are
computed independently (numpy, explicit formulas), not with the code under test."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kdpipe.config import StudentDistillConfig
from kdpipe.errors import ConfigError
from kdpipe.methods import Batch, MethodContext, build_method
from kdpipe.methods.common.losses import kd_divergence, kd_loss, standardize
from kdpipe.methods.ctkd import GlobalTemperature, cosine_curriculum
from kdpipe.methods.dist import dist_terms
from kdpipe.methods.dkd import dkd_loss
from kdpipe.methods.reviewkd import hcl_loss
from kdpipe.models.registry import build_model

SHAPE = (1, 8, 8)


def np_softmax(z, temperature):
    e = np.exp(z / temperature - (z / temperature).max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def np_zscore(z):
    return (z - z.mean(axis=1, keepdims=True)) / (z.std(axis=1, ddof=1, keepdims=True) + 1e-7)


def np_kd(s, t, temperature):
    """T^2 * KL(p_t || p_s), batch mean."""
    ps, pt = np_softmax(s, temperature), np_softmax(t, temperature)
    return temperature**2 * (pt * np.log(pt / ps)).sum(axis=1).mean()


def linear_pair(seed=0, classes=5):
    torch.manual_seed(seed)
    return torch.nn.Linear(6, classes), torch.nn.Linear(6, classes)


def method_on(name, student, teacher, **link):
    section = link.pop("section", None)
    cfg = StudentDistillConfig(method=name, **link, **({name: section} if section else {}))
    return build_method(name, student, teacher, cfg)


# ---------------------------------------------------------------- DIST


def test_dist_inter_and_intra_by_hand():
    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(4, 5)), rng.normal(size=(4, 5)) * 2
    temperature = 3.0
    ps, pt = np_softmax(s, temperature), np_softmax(t, temperature)
    inter = 1 - np.mean([np.corrcoef(ps[i], pt[i])[0, 1] for i in range(4)])
    intra = 1 - np.mean([np.corrcoef(ps[:, j], pt[:, j])[0, 1] for j in range(5)])
    got_inter, got_intra = dist_terms(torch.tensor(s), torch.tensor(t), temperature)
    assert got_inter.item() == pytest.approx(temperature**2 * inter, rel=1e-6)
    assert got_intra.item() == pytest.approx(temperature**2 * intra, rel=1e-6)


def test_dist_two_classes_by_hand():
    # two classes: rows [p, 1-p] are perfectly (anti-)correlated, so inter is 0 or 2 exactly
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    inter, _ = dist_terms(s, s * 3, 1.0)  # same ordering in every row: rho = 1
    assert inter.item() == pytest.approx(0.0, abs=1e-6)
    inter, _ = dist_terms(s, -s, 1.0)  # reversed ordering in every row: rho = -1
    assert inter.item() == pytest.approx(2.0, rel=1e-6)


def test_dist_zero_at_equality_and_method_total():
    z = torch.randn(6, 10)
    inter, intra = dist_terms(z, z.clone(), 4.0)  # (1e-8 in the correlation's denominator, times T^2)
    assert inter.item() == pytest.approx(0.0, abs=5e-4) and intra.item() == pytest.approx(0.0, abs=5e-4)
    student, teacher = linear_pair()
    method = method_on("dist", student, teacher, temperature=2.0, section={"beta": 1.5, "gamma": 0.5})
    x, y = torch.randn(8, 6), torch.arange(8) % 5
    logits, loss, terms = method(Batch(x, y))
    with torch.no_grad():
        s, t = student(x).numpy().astype(np.float64), teacher(x).numpy().astype(np.float64)
    ps, pt = np_softmax(s, 2.0), np_softmax(t, 2.0)
    inter = 4 * (1 - np.mean([np.corrcoef(ps[i], pt[i])[0, 1] for i in range(8)]))
    intra = 4 * (1 - np.mean([np.corrcoef(ps[:, j], pt[:, j])[0, 1] for j in range(5)]))
    ce = F.cross_entropy(logits, y).item()
    assert terms["inter"].item() == pytest.approx(inter, rel=1e-4)
    assert terms["intra"].item() == pytest.approx(intra, rel=1e-4)
    assert loss.item() == pytest.approx(ce + 1.5 * inter + 0.5 * intra, rel=1e-4)


# ---------------------------------------------------------------- ReviewKD


def np_hcl(fs, ft):
    """HCL of one pair of (N, C, H, W) maps, written out for H = W divisible by the levels."""
    h = fs.shape[2]
    loss, weight, norm = ((fs - ft) ** 2).mean(), 1.0, 1.0
    for level in (4, 2, 1):
        if level >= h:
            continue
        k = h // level
        pool = lambda f: f.reshape(*f.shape[:2], level, k, level, k).mean(axis=(3, 5))  # noqa: E731
        weight /= 2
        loss += weight * ((pool(fs) - pool(ft)) ** 2).mean()
        norm += weight
    return loss / norm


def test_hcl_by_hand():
    # 2x2 maps: levels 4 and 2 are skipped, the 1x1 pool is weighted 1/2
    fs = torch.zeros(1, 1, 2, 2)
    ft = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    full = (1 + 4 + 9 + 16) / 4
    pooled = 2.5**2
    assert hcl_loss([fs], [ft]).item() == pytest.approx((full + 0.5 * pooled) / 1.5, rel=1e-6)
    # 8x8 maps use all three levels; stages are summed
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(2, 3, 8, 8)), rng.normal(size=(2, 3, 8, 8))
    c, d = rng.normal(size=(2, 4, 4, 4)), rng.normal(size=(2, 4, 4, 4))
    got = hcl_loss([torch.tensor(a), torch.tensor(c)], [torch.tensor(b), torch.tensor(d)]).item()
    assert got == pytest.approx(np_hcl(a, b) + np_hcl(c, d), rel=1e-6)
    assert hcl_loss([torch.tensor(a)], [torch.tensor(a)]).item() == 0.0


def reviewkd(student_arch="resnet18", teacher_arch="resnet34", **section):
    torch.manual_seed(0)
    student, teacher = build_model(student_arch, 10, 1, 8), build_model(teacher_arch, 10, 1, 8).eval()
    cfg = StudentDistillConfig(method="reviewkd", **({"reviewkd": section} if section else {}))
    ctx = MethodContext(input_shape=SHAPE, student_arch=student_arch, teacher_arch=teacher_arch)
    return build_method("reviewkd", student, teacher, cfg, 0.0, ctx)


@pytest.mark.parametrize("student_arch,teacher_arch", [("resnet18", "resnet50"), ("vgg11_bn", "resnet18")])
def test_reviewkd_outputs_take_the_teachers_shapes(student_arch, teacher_arch):
    # resnet50: other widths; vgg11_bn: other spatial sizes (4x4 ... 1x1 against 8x8 ... 1x1)
    method = reviewkd(student_arch, teacher_arch)
    method.train()
    x = torch.randn(4, *SHAPE)
    method.teacher.logits(Batch(x, None))
    method.student(x)
    outs = method.review(method.s_tap.features())
    assert [o.shape[1:] for o in outs] == [t for t in method.t_shapes]
    assert method.abfs[-1].attention is None and all(a.attention is not None for a in method.abfs[:-1])
    method.close()


def test_reviewkd_warmup_scales_with_the_run():
    method = reviewkd()
    x, y = torch.randn(4, *SHAPE), torch.arange(4)
    method.set_progress(5, 240)  # mdistiller's schedule: 5 / 20
    _, loss, terms = method(Batch(x, y))
    assert loss.item() == pytest.approx(terms["ce"].item() + 0.25 * terms["reviewkd"].item(), rel=1e-5)
    method.set_progress(1, 10)  # a 10-epoch run: 20/240 of it is under one epoch
    assert method.ramp() == 1.0
    method.close()
    method = reviewkd(warmup=0.5, weight=2.0)
    method.set_progress(2, 8)
    _, loss, terms = method(Batch(x, y))
    assert loss.item() == pytest.approx(terms["ce"].item() + 2.0 * 0.5 * terms["reviewkd"].item(), rel=1e-5)
    method.close()


# ---------------------------------------------------------------- CTKD


def test_cosine_curriculum():
    assert cosine_curriculum(0, 240, 1.0, 10 / 240) == 0.0
    assert cosine_curriculum(5, 240, 1.0, 10 / 240) == pytest.approx(0.5)
    assert cosine_curriculum(1, 240, 2.0, 10 / 240) == pytest.approx(2.0 * (1 - math.cos(math.pi / 10)) / 2)
    assert cosine_curriculum(10, 240, 2.0, 10 / 240) == pytest.approx(2.0)
    assert cosine_curriculum(200, 240, 2.0, 10 / 240) == pytest.approx(2.0)
    values = [cosine_curriculum(e, 20, 1.0, 1.0) for e in range(21)]
    assert values == sorted(values) and values[-1] == pytest.approx(1.0)


def test_temperature_starts_at_the_links_and_stays_in_range():
    module = GlobalTemperature(4.0, 1.0, 20.0)
    assert module(1.0).item() == pytest.approx(4.0, rel=1e-5)
    with torch.no_grad():
        module.theta.fill_(1e4)
    assert module(1.0).item() == pytest.approx(20.0)
    with torch.no_grad():
        module.theta.fill_(-1e4)
    assert module(1.0).item() == pytest.approx(1.0)


def test_ctkd_kd_term_at_its_temperature_and_reversed_gradient():
    student, teacher = linear_pair(1)
    method = method_on("ctkd", student, teacher, temperature=3.0, alpha=0.6)
    method.set_progress(5, 240)  # lambda = 0.5 with the default curriculum (10 of 240 epochs)
    assert method.lam == pytest.approx(0.5)
    x, y = torch.randn(8, 6), torch.arange(8) % 5
    logits, loss, terms = method(Batch(x, y))
    with torch.no_grad():
        s, t = student(x).double(), teacher(x).double()
    assert terms["temperature"].item() == pytest.approx(3.0, rel=1e-5)
    expected_kd = np_kd(s.numpy(), t.numpy(), 3.0)
    assert terms["kd"].item() == pytest.approx(expected_kd, rel=1e-4)
    ce = F.cross_entropy(s, y).item()
    assert loss.item() == pytest.approx(0.6 * expected_kd + 0.4 * ce, rel=1e-4)

    # the plain KD gradient with respect to T, at the same T ...
    temp = torch.tensor(terms["temperature"].item(), dtype=torch.float64, requires_grad=True)
    (0.6 * kd_divergence(s, t, temp)).backward()
    # ... reaches theta reversed and scaled by lambda, through dT/dtheta = (t_max - t_min) sig (1 - sig)
    loss.backward()
    sig = torch.sigmoid(method.temperature.theta.detach()).item()
    expected = -0.5 * temp.grad.item() * 19.0 * sig * (1 - sig)
    got = method.temperature.theta.grad.item()
    assert got == pytest.approx(expected, rel=1e-3)  # (the method runs in fp32, the reference in fp64)
    assert got * temp.grad.item() < 0  # ascends the KD loss while the student descends it


def test_ctkd_temperature_is_the_methods_own_part():
    student, teacher = linear_pair()
    method = method_on("ctkd", student, teacher)
    extras = [n for n, _ in method.named_parameters() if not n.startswith("student.")]
    assert extras == ["temperature.theta"]
    assert "temperature.theta" not in {f"student.{k}" for k in student.state_dict()}
    with pytest.raises(ConfigError, match=r"distill\.ctkd\.t_max: t_max must be above t_min"):
        method_on("ctkd", student, teacher, section={"t_min": 5.0, "t_max": 2.0})


# ---------------------------------------------------------------- logit standardisation


def test_standardize_rows_have_mean_zero_and_std_one():
    z = torch.randn(5, 7) * 4 + 3
    s = standardize(z)
    torch.testing.assert_close(s.mean(dim=1), torch.zeros(5), atol=1e-6, rtol=0)
    torch.testing.assert_close(s.std(dim=1), torch.ones(5), atol=1e-5, rtol=0)
    np.testing.assert_allclose(s.numpy(), np_zscore(z.double().numpy()), rtol=1e-5, atol=1e-6)
    # the softmax of standardised logits ignores each row's shift and scale
    torch.testing.assert_close(standardize(2.5 * z - 1.0), s, atol=1e-5, rtol=1e-5)


def test_kd_loss_with_standardisation_is_kd_on_zscored_logits():
    rng = np.random.default_rng(2)
    s, t = rng.normal(size=(4, 6)) * 3, rng.normal(size=(4, 6)) + 2
    y = torch.tensor([0, 1, 2, 3])
    total, kd, ce = kd_loss(torch.tensor(s), torch.tensor(t), y, 2.0, 0.7, standardize_logits=True)
    assert kd.item() == pytest.approx(np_kd(np_zscore(s), np_zscore(t), 2.0), rel=1e-6)
    assert ce.item() == pytest.approx(F.cross_entropy(torch.tensor(s), y).item(), rel=1e-9)  # raw logits
    assert total.item() == pytest.approx(0.7 * kd.item() + 0.3 * ce.item(), rel=1e-9)


def test_standardisation_off_leaves_kd_and_dkd_bit_identical():
    x, y = torch.randn(8, 6), torch.arange(8) % 5
    for name in ("kd", "dkd"):
        student, teacher = linear_pair(3)
        method = method_on(name, student, teacher, temperature=4.0, alpha=0.9)
        assert method.standardize is False
        _, loss, terms = method(Batch(x, y))
        s, t = student(x), teacher(x).detach()
        if name == "kd":  # the arithmetic of before the option: kd_loss without it
            before, _, _ = kd_loss(s, t, y, 4.0, 0.9, 0.0)
        else:
            before = F.cross_entropy(s.float(), y) + dkd_loss(s, t, y, 1.0, 8.0, 4.0)
        assert torch.equal(loss, before)


class Fixed(torch.nn.Module):
    """A network that always outputs the same logits."""

    def __init__(self, logits):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, x):
        return self.logits


@pytest.mark.parametrize("name", ["kd", "dkd", "dist", "ctkd"])
def test_every_logit_method_standardises_its_distillation_term_only(name):
    student, teacher = linear_pair(4)
    x, y = torch.randn(8, 6), torch.arange(8) % 5
    _, loss_on, terms_on = method_on(name, student, teacher, temperature=2.0, logit_standardize=True)(Batch(x, y))
    with torch.no_grad():
        s, t = student(x), teacher(x)
    # the same method, without the option, on networks that output the z-scored logits
    reference = method_on(name, Fixed(standardize(s)), Fixed(standardize(t)), temperature=2.0)
    _, _, terms_ref = reference(Batch(x, y))
    distill_terms = set(terms_on) - {"ce", "temperature"}
    assert distill_terms
    for key in distill_terms:
        assert terms_on[key].item() == pytest.approx(terms_ref[key].item(), rel=1e-5), key
    _, _, terms_off = method_on(name, student, teacher, temperature=2.0)(Batch(x, y))
    assert any(abs(terms_on[k].item() - terms_off[k].item()) > 1e-4 for k in distill_terms)  # it did something
    # cross-entropy keeps the raw logits
    assert terms_on["ce"].item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)


def test_standardisation_is_refused_where_there_is_no_logit_term():
    torch.manual_seed(0)
    student, teacher = build_model("resnet18", 10, 1, 8), build_model("resnet34", 10, 1, 8)
    cfg = StudentDistillConfig(method="at", logit_standardize=True)
    ctx = MethodContext(input_shape=SHAPE, student_arch="resnet18", teacher_arch="resnet34")
    with pytest.raises(ConfigError, match=r"distill\.logit_standardize: method 'at' has no logit distillation"):
        build_method("at", student, teacher, cfg, 0.0, ctx)
    with pytest.raises(ConfigError, match=r"distill\.logit_standardize: method 'none'"):
        build_method("none", student, None, StudentDistillConfig(method="none", logit_standardize=True))
