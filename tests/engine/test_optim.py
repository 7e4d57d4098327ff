import pytest
import torch

from kdpipe.config import RoleConfig
from kdpipe.engine.optim import build_optimizer, build_scheduler


def lrs(cfg: RoleConfig, steps_per_epoch: int) -> list[float]:
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model.parameters(), cfg)
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
    assert isinstance(build_optimizer(model.parameters(), RoleConfig(arch="resnet18", epochs=1, optimizer="adamw")), torch.optim.AdamW)
    assert isinstance(build_optimizer(model.parameters(), RoleConfig(arch="resnet18", epochs=1)), torch.optim.SGD)


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
