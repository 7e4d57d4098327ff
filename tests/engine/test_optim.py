import pytest
import torch

from kdpipe.config import RoleConfig
from kdpipe.engine.optim import build_optimizer, build_scheduler


def lrs(cfg: RoleConfig, steps_per_epoch: int) -> list[float]:
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, cfg)
    sched = build_scheduler(opt, cfg, steps_per_epoch)
    out = []
    for _ in range(cfg.epochs * steps_per_epoch):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


@pytest.mark.parametrize("total", [1, 2, 3, 4, 5, 40])
def test_onecycle_survives_any_length(total):
    values = lrs(RoleConfig(arch="resnet18", epochs=1, lr=0.1, scheduler="onecycle"), total)
    assert len(values) == total and max(values) <= 0.1 + 1e-9


def test_onecycle_warms_up_then_anneals():
    values = lrs(RoleConfig(arch="resnet18", epochs=4, lr=0.1, warmup_fraction=0.25), 10)
    peak = values.index(max(values))
    assert 8 <= peak <= 10 and values[0] < 0.01 and values[-1] < 1e-3


def test_cosine_and_step_schedules():
    cos = lrs(RoleConfig(arch="resnet18", epochs=2, lr=0.1, scheduler="cosine"), 5)
    assert cos[0] == pytest.approx(0.1) and cos == sorted(cos, reverse=True)
    step = lrs(RoleConfig(arch="resnet18", epochs=4, lr=0.1, scheduler="step", step_size=2, gamma=0.5), 3)
    assert step[:6] == [pytest.approx(0.1)] * 6 and step[6] == pytest.approx(0.05)


def test_adamw_and_sgd():
    model = torch.nn.Linear(2, 2)
    assert isinstance(build_optimizer(model, RoleConfig(arch="resnet18", epochs=1, optimizer="adamw")), torch.optim.AdamW)
    assert isinstance(build_optimizer(model, RoleConfig(arch="resnet18", epochs=1)), torch.optim.SGD)


def test_multistep_decays_after_each_milestone_epoch():
    """The CIFAR benchmark recipe's schedule: lr x gamma after epochs 150, 180, 210 (here 2 and 3 of 5)."""
    values = lrs(RoleConfig(arch="resnet18", epochs=5, lr=0.05, scheduler="multistep", milestones=[2, 3]), 4)
    assert values == [pytest.approx(v) for v in [0.05] * 8 + [0.005] * 4 + [0.0005] * 8]


@pytest.mark.parametrize("milestones, message", [
    ([], "scheduler multistep needs milestones"),
    ([3, 2], "milestones must increase"),
    ([2, 5], r"milestones must increase, each between 1 and epochs - 1 \(4\)"),
])
def test_multistep_milestones_are_checked(milestones, message):
    from kdpipe.config import parse_params
    from kdpipe.errors import ConfigError
    from conftest import tiny_params

    p = tiny_params(**{"student.scheduler": "multistep", "student.epochs": 5, "student.milestones": milestones})
    with pytest.raises(ConfigError, match=f"student: {message}"):
        parse_params(p)


def test_triangle_rises_from_a_fifth_then_falls_to_zero():
    values = lrs(RoleConfig(arch="resnet18", epochs=2, lr=1.0, scheduler="triangle", warmup_fraction=0.2), 10)
    assert values[0] == pytest.approx(0.2) and values[4] == pytest.approx(1.0)
    assert values[:5] == sorted(values[:5]) and values[4:] == sorted(values[4:], reverse=True)
    assert values[-1] == pytest.approx(1 / 16)  # the 20th of 20 steps: one sixteenth of the way down is left


def test_norm_bias_lr_scale_puts_the_shifts_in_their_own_group_with_the_same_decay_per_step():
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.Linear(4, 2))
    model[1].weight.requires_grad_(False)
    cfg = RoleConfig(arch="resnet18", epochs=1, lr=0.5, weight_decay=0.01, norm_bias_lr_scale=64)
    plain, shifts = build_optimizer(model, cfg).param_groups
    assert [p is model[1].bias for p in shifts["params"]] == [True]
    assert all(p is not model[1].weight for p in plain["params"]) and len(plain["params"]) == 4  # conv, linear: w, b
    assert shifts["lr"] == 32 and shifts["lr"] * shifts["weight_decay"] == pytest.approx(plain["lr"] * plain["weight_decay"])
    # the schedule scales both groups alike
    opt = build_optimizer(model, cfg.model_copy(update={"scheduler": "onecycle", "epochs": 4}))
    sched = build_scheduler(opt, cfg.model_copy(update={"scheduler": "onecycle", "epochs": 4}), 10)
    for _ in range(20):
        opt.step()
        sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(64 * opt.param_groups[0]["lr"])
    assert len(build_optimizer(model, cfg.model_copy(update={"norm_bias_lr_scale": 1.0})).param_groups) == 1
