"""DDP (several processes with the global batch sharded) and torch.compile train like one eager process."""

import json
import os
import re
import socket

import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

from conftest import kill_when, make_workspace, run, start, write_params
from kdpipe.config import DistillConfig, RoleConfig, StudentDistillConfig, TrainConfig
from kdpipe.data.prepared import PreparedData, PreparedMeta, Split
from kdpipe.engine.compile import compiled
from kdpipe.engine.runtime import setup_runtime
from kdpipe.engine.trainer import fit
from kdpipe.methods import Batch, MethodContext, build_method
from kdpipe.models.registry import build_model


def _data() -> PreparedData:
    g = torch.Generator().manual_seed(0)
    meta = PreparedMeta("toy", [str(i) for i in range(4)], 1, 8, 8, [0.5], [0.25], {"train": 256, "val": 64})
    split = lambda n: Split(torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8),
                            torch.randint(0, 4, (n,), generator=g))
    return PreparedData(meta, {"train": split(256), "val": split(64)})


def _net() -> nn.Module:
    # No BatchNorm: DDP must then reproduce one process exactly. Stride 2 on 8x8 images: a 4x4
    # output, so on CPUs the conv takes the engine's small-conv GEMM path, under DDP and compiled too.
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(32, 4))


def _train(out: str) -> None:
    train_cfg = TrainConfig(batch_size=32, precision="fp32", channels_last=False, num_threads=1)
    role = RoleConfig(arch="resnet18", epochs=2, optimizer="adamw", lr=0.01, weight_decay=0.0)
    runtime = setup_runtime(train_cfg, seed=7)
    method = build_method("none", _net(), None, None)
    result = fit(method, role, train_cfg, _data(), runtime, seed=7)
    if runtime.is_main:
        torch.save({"state": method.student.state_dict(), "loss": [h["train/loss"] for h in result.history]}, out)


def _worker(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    _train(out)
    torch.distributed.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_sharded_batches_and_averaged_gradients_equal_one_process(tmp_path):
    _train(str(tmp_path / "single.pt"))
    mp.spawn(_worker, args=(2, _free_port(), str(tmp_path / "ddp.pt")), nprocs=2, join=True)
    single, ddp = torch.load(tmp_path / "single.pt"), torch.load(tmp_path / "ddp.pt")
    assert ddp["loss"] == pytest.approx(single["loss"], rel=1e-5)  # all-reduced epoch losses
    for key, value in single["state"].items():
        torch.testing.assert_close(ddp["state"][key], value, rtol=1e-4, atol=1e-5)


def _crd_worker(rank: int, world: int, port: int, out: str) -> None:
    """One epoch of crd under DDP; each rank saves its memory banks before and after."""
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world))
    train_cfg = TrainConfig(batch_size=32, precision="fp32", channels_last=False, num_threads=1)
    runtime = setup_runtime(train_cfg, seed=7)
    data = _data()
    context = MethodContext(input_shape=(1, 8, 8), student_arch="resnet18", teacher_arch="resnet18",
                            num_train=len(data["train"]))
    student, teacher = build_model("resnet18", 4, 1, 8), build_model("resnet18", 4, 1, 8)
    method = build_method("crd", student, teacher, StudentDistillConfig(method="crd"), 0.0, context)
    before = method.memory_s.clone()
    fit(method, RoleConfig(arch="resnet18", epochs=1, lr=0.01), train_cfg, data, runtime, seed=7)
    torch.save({"before": before, "s": method.memory_s, "t": method.memory_t}, f"{out}.{rank}")
    torch.distributed.destroy_process_group()


def test_crd_banks_see_the_whole_global_batch_under_ddp(tmp_path):
    mp.spawn(_crd_worker, args=(2, _free_port(), str(tmp_path / "banks")), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"banks.{r}") for r in range(2)]
    assert torch.equal(ranks[0]["before"], ranks[1]["before"])  # same seed: same initial banks
    # one epoch visits all 256 images, half of them on each rank: every row moved on both ranks
    for banks in ranks:
        assert (banks["s"] != banks["before"]).any(dim=1).all()
    assert torch.equal(ranks[0]["s"], ranks[1]["s"]) and torch.equal(ranks[0]["t"], ranks[1]["t"])


@pytest.mark.integration
def test_torchrun_stage_with_two_processes(tmp_path):
    """`train.nproc_per_node: 2` re-launches the stage under torchrun; rank 0 writes the outputs."""
    ws = make_workspace(tmp_path / "ws")
    overrides = {"teacher.epochs": 5, "train.batch_size": 128, "data.max_train_samples": None}
    write_params(ws, **overrides)
    run(["dvc", "repro", "prepare"], ws)
    run(["python", "src/train_teacher.py"], ws)
    single = json.loads((ws / "metrics/train_teacher.json").read_text())

    write_params(ws, **overrides, **{"train.nproc_per_node": 2})
    proc = run(["python", "src/train_teacher.py"], ws)
    ddp = json.loads((ws / "metrics/train_teacher.json").read_text())
    assert "DDP rank 0 of 2" in proc.stderr, proc.stderr
    assert "DDP rank 1" not in proc.stderr  # the other rank stays quiet
    assert (ws / "models/teacher.pt").is_file() and ddp["epochs"] == 5
    # Same data order, augmentation and global batch; BatchNorm differs (each CPU process
    # normalises its 64-image shard: there is no SyncBatchNorm on CPUs), so only close. Five
    # epochs: after three (about 0.6), that small difference moved accuracy by over 0.1.
    assert abs(ddp["best_val_accuracy"] - single["best_val_accuracy"]) <= 0.05, (single, ddp)
    assert ddp["best_val_accuracy"] > 0.8, ddp

    # killed once epoch 2's state is saved (by rank 0), run again: every rank resumes from it
    # and the result is the uninterrupted DDP run's, byte for byte
    model = (ws / "models/teacher.pt").read_bytes()
    proc = start(["python", "src/train_teacher.py"], ws)
    assert kill_when(proc, lambda: any((ws / ".kdpipe/resume/teacher").glob("*/epoch-0002.pt.sha256")))
    resumed = run(["python", "src/train_teacher.py"], ws)
    assert re.search(r"resuming from \.kdpipe/resume/teacher/\w+/epoch-0002\.pt", resumed.stderr), resumed.stderr
    assert (ws / "models/teacher.pt").read_bytes() == model
    again = json.loads((ws / "metrics/train_teacher.json").read_text())
    assert [again[k] for k in ("best_val_accuracy", "last_val_accuracy")] == [ddp[k] for k in ("best_val_accuracy", "last_val_accuracy")]


@pytest.mark.parametrize("name", ["none", "kd"])
def test_compiled_training_step_matches_eager(name):
    """train.compile: compiled steps (and a frozen compiled teacher) train the same parameters."""
    data = _data()
    losses = {}
    for compile_ in (False, True):
        train_cfg = TrainConfig(batch_size=32, precision="fp32", channels_last=False, compile=compile_)
        role = RoleConfig(arch="resnet18", epochs=1, optimizer="adamw", lr=0.01, weight_decay=0.0)
        torch.manual_seed(0)
        teacher = _net().eval() if name == "kd" else None
        method = build_method(name, _net(), teacher, DistillConfig(method=name))
        result = fit(method, role, train_cfg, data, setup_runtime(train_cfg, seed=3), seed=3)
        losses[compile_] = (result.history[0]["train/loss"], method.student.state_dict())
    assert losses[True][0] == pytest.approx(losses[False][0], rel=1e-4)
    for key, value in losses[False][1].items():
        torch.testing.assert_close(losses[True][1][key], value, rtol=1e-3, atol=1e-4)


def test_cached_teacher_runs_the_teacher_once_per_view():
    """distill.cache_views: the teacher's logits on K fixed views are computed before training,
    then every step reads them (the teacher is never called in the loop)."""
    data = _data()
    teacher = _net().eval()
    calls = []
    teacher.register_forward_hook(lambda _m, inputs, _out: calls.append(len(inputs[0])))
    train_cfg = TrainConfig(batch_size=32, eval_batch_size=64, precision="fp32", channels_last=False)
    role = RoleConfig(arch="resnet18", epochs=3, optimizer="adamw", lr=0.01, weight_decay=0.0)
    method = build_method("kd", _net(), teacher, DistillConfig(method="kd", cache_views=2))
    result = fit(method, role, train_cfg, data, setup_runtime(train_cfg, seed=0), seed=0)
    assert sum(calls) == 2 * 256 and len(calls) == 2 * 4  # 2 views x 256 images in batches of 64
    assert all(torch.isfinite(torch.tensor(h["train/loss"])) for h in result.history)


def test_cache_refused_for_feature_methods():
    from kdpipe.config import StudentDistillConfig
    from kdpipe.errors import ConfigError
    from kdpipe.methods import check_link

    with pytest.raises(ConfigError, match="distill.cache_views: method 'at' reads the teacher's features"):
        check_link(StudentDistillConfig(method="at", cache_views=2), "distill")
    check_link(StudentDistillConfig(method="dkd", cache_views=2), "distill")


def test_compiled_teacher_is_frozen():
    """train.compile freezes the teacher: BatchNorm folded into constant weights, so a change to
    the module's own weights after compilation no longer reaches its outputs (an unfrozen graph
    reads the parameters at every call). Guards against the freezing flag being ignored."""
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                            nn.Flatten(), nn.Linear(8, 4)).eval()
    method = build_method("kd", _net(), teacher, DistillConfig(method="kd"))
    batch = Batch(torch.randn(4, 1, 8, 8), None)
    with compiled(method, True), torch.no_grad():
        before = method.teacher.logits(batch)
        teacher[0].weight.zero_()
        assert torch.equal(method.teacher.logits(batch), before)
        eager = teacher(batch.images)
    assert not torch.allclose(eager, before)  # the module itself did change
    assert torch.equal(method.teacher.logits(batch), eager)  # the eager teacher again after the block
    assert "forward" not in vars(method.student)  # the student's compiled forward undone too
