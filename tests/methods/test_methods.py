"""Each registered method on real (small) networks: losses, which parts learn, clear refusals."""

import pytest
import torch

from kdpipe.config import StudentDistillConfig
from kdpipe.errors import ConfigError
from kdpipe.methods import METHODS, Batch, MethodContext, build_method
from kdpipe.models.registry import build_model

SHAPE = (1, 8, 8)


def nets(student_arch="resnet18", teacher_arch="resnet34"):
    torch.manual_seed(0)
    return build_model(student_arch, 10, 1, 8), build_model(teacher_arch, 10, 1, 8).eval()


def make(name, student_arch="resnet18", teacher_arch="resnet34", teacher_chunk=0, **section):
    student, teacher = nets(student_arch, teacher_arch)
    cfg = StudentDistillConfig(method=name, **({name: section} if section else {}))
    ctx = MethodContext(
        input_shape=SHAPE, student_arch=student_arch, teacher_arch=teacher_arch,
        build_network=lambda arch: build_model(arch, 10, 1, 8), num_train=64, teacher_chunk=teacher_chunk,
    )
    return build_method(name, student, teacher if METHODS[name].needs_teacher else None, cfg, 0.0, ctx)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_and_keeps_the_teacher_frozen(name):
    # a teacher chunk, as on CPUs: logits-only methods chunk, feature taps see the whole batch
    method = make(name, teacher_chunk=3)
    method.train()
    x, y = torch.randn(8, *SHAPE), torch.arange(8) % 10
    logits, loss, terms = method(Batch(x, y, torch.arange(8) if method.needs_indices else None))
    assert logits.shape == (8, 10) and loss.ndim == 0 and torch.isfinite(loss)
    assert all(torch.isfinite(v) for v in terms.values())
    loss.backward()
    assert all(p.grad is not None for p in method.student.parameters() if p.requires_grad)
    if method.teacher is not None:
        assert all(p.grad is None for p in method.teacher.network.parameters())
        assert not method.teacher.network.training
    # extra parts (regressors, projections, heads, peers) get gradients too
    student_ids = {id(p) for p in method.student.parameters()}
    extras = [p for p in method.parameters() if id(p) not in student_ids]
    assert all(p.grad is not None for p in extras)
    if extras:  # (single tensors can be exactly zero, e.g. behind a zero-initialised residual BN)
        assert sum(p.grad.abs().sum() for p in extras) > 0
    # (resnet18 and resnet34 share the 512-wide embedding, so cosine needs no projection here)
    assert len(extras) > 0 or name in {"none", "kd", "at", "dkd", "dist", "rkd", "pkt", "sp", "cosine"}
    method.close()


def test_extra_parts_stay_out_of_the_student():
    method = make("fitnets")
    assert method.extra_parameters() > 0
    keys = set(method.student.state_dict())
    assert not any(k.startswith("regressors") for k in keys)
    assert all(f"student.{k}" in method.state_dict() for k in keys)


def test_fitnets_hint_stage_trains_only_the_hint():
    method = make("fitnets", hint_epochs=1)
    x, y = torch.randn(4, *SHAPE), torch.arange(4)
    method.set_progress(1, 3)
    _, loss1, terms = method(Batch(x, y))
    assert loss1.item() == pytest.approx(terms["fitnets"].item(), rel=1e-5)
    method.set_progress(2, 3)
    _, loss2, terms = method(Batch(x, y))
    assert loss2.item() > terms["fitnets"].item()


def test_cosine_projects_when_widths_differ():
    assert isinstance(make("cosine", "resnet18", "resnet50").projection, torch.nn.Linear)
    assert isinstance(make("cosine", "resnet18", "resnet34").projection, torch.nn.Identity)


@pytest.mark.parametrize("name", ["fitnets", "at", "feature_mse", "cosine", "byot", "dml", "reviewkd"])
def test_vgg_with_default_layers(name):
    """VGG students and teachers work with every feature method's default layers."""
    method = make(name, student_arch="vgg11_bn", teacher_arch="resnet18")
    method.train()
    logits, loss, _ = method(Batch(torch.randn(4, *SHAPE), torch.arange(4)))
    loss.backward()
    assert logits.shape == (4, 10) and torch.isfinite(loss)
    method.close()
    method = make(name, student_arch="resnet18", teacher_arch="vgg16_bn")
    method.train()
    assert torch.isfinite(method(Batch(torch.randn(4, *SHAPE), torch.arange(4)))[1])
    method.close()


def test_mobilenet_student_from_resnet_teacher():
    method = make("at", "mobilenet_v2", "resnet34")
    _, loss, _ = method(Batch(torch.randn(4, *SHAPE), torch.arange(4)))
    assert torch.isfinite(loss)


def test_bad_layer_names_and_pairing_are_refused():
    with pytest.raises(ConfigError, match=r"distill\.at\.student_layers: the model has no layer 'layer5'.*layer4"):
        make("at", student_layers=["layer5"], teacher_layers=["layer4"])
    with pytest.raises(ConfigError, match="must pair up"):
        make("at", student_layers=["layer1", "layer2"], teacher_layers=["layer4"])


def test_dml_peers_and_refusals():
    method = make("dml", peers=3)
    assert len(method.peers) == 2
    with pytest.raises(ConfigError, match=r"distill\.dml\.peer_arch: unknown architecture 'resnet19'"):
        make("dml", peer_arch="resnet19")


def test_dkd_warmup_ramps_the_term():
    method = make("dkd", warmup_epochs=4)
    x, y = torch.randn(4, *SHAPE), torch.arange(4)
    method.set_progress(1, 8)
    _, early, t1 = method(Batch(x, y))
    assert early.item() == pytest.approx(t1["ce"].item() + 0.25 * t1["dkd"].item(), rel=1e-5)


def test_the_methods_page_lists_every_registered_method():
    """docs/methods.md's table is checked against the registry: a new method file must be documented."""
    import re

    from conftest import ROOT

    text = (ROOT / "docs/methods.md").read_text()
    table = text[text.index("| method | what the student learns from"):].split("\n\n", 1)[0]
    assert set(re.findall(r"^\| `(\w+)` \|", table, re.M)) == set(METHODS)


def test_cosine_on_named_layers_averages_the_teacher_down_as_the_tutorial():
    """PyTorch's KD tutorial: 1 - cos(student's flattened conv map, teacher's averaged down to its width)."""
    tutorial = {"match": "avg_pool", "student_layers": ["features"], "teacher_layers": ["features"], "weight": 1.0}
    method = make("cosine", "lightnn", "deepnn", **tutorial)
    assert isinstance(method.projection, torch.nn.Identity) and method.pool == 2  # 32x2x2 -> 16x2x2 at 8 px
    x = torch.randn(4, *SHAPE)
    _, _, terms = method(Batch(x, torch.tensor([0, 1, 2, 3])))
    s = method.student.features(x).flatten(1)
    t = method.teacher.network.features(x).flatten(1)
    t = (t[:, 0::2] + t[:, 1::2]) / 2  # avg_pool1d(2): neighbours averaged
    expected = (1 - torch.nn.functional.cosine_similarity(s, t)).mean()
    assert terms["cosine"].item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ConfigError, match=r"distill.cosine.match: avg_pool needs the teacher's width \(128\) to be a "
                                          r"multiple of the student's \(256\)"):
        make("cosine", "lightnn", "deepnn", match="avg_pool", student_layers=["features.3"], teacher_layers=["features"])


def test_feature_mse_takes_the_tutorials_regressor():
    method = make("feature_mse", "lightnn", "deepnn", regressor_kernel=3, regressor_batch_norm=False,
                  student_layers=["features"], teacher_layers=["features"])
    (reg,) = method.regressors
    assert len(reg) == 1 and reg[0].kernel_size == (3, 3) and reg[0].bias is not None and reg[0].out_channels == 32
    default = make("feature_mse").regressors[0]
    assert default[0].kernel_size == (1, 1) and isinstance(default[1], torch.nn.BatchNorm2d)
