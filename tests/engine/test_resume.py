"""Per-epoch state: an interrupted fit resumes to exactly the uninterrupted result; damaged,
partial or foreign state is never resumed from; a failed write loses nothing."""

import errno

import pytest
import torch

from kdpipe.config import AugmentConfig, DistillConfig, RoleConfig, TrainConfig
from kdpipe.engine import resume
from kdpipe.engine.resume import CheckpointWriteError, EpochCheckpoints
from kdpipe.engine.runtime import setup_runtime
from kdpipe.engine.trainer import NonFiniteLossError, fit
from kdpipe.methods import build_method
from kdpipe.methods.common.base import Method, MethodContext
from kdpipe.models.registry import build_model

from .test_trainer import toy_data

EPOCHS = 4


class Interrupt(Exception):
    pass


class StopAt:
    """A logger that dies when epoch ``epoch`` is logged (that epoch's state is never saved)."""

    def __init__(self, epoch=None):
        self.epoch, self.logged = epoch, []

    def log_epoch(self, epoch, values):
        if epoch == self.epoch:
            raise Interrupt
        self.logged.append(epoch)


def run_fit(checkpoints=None, logger=None, method="cosine"):
    # bf16 where the CPU has it, random crops and cutout (the augmentation RNG), and a method
    # with its own trainable projection (restored with the student)
    cfg = TrainConfig(batch_size=32, device="cpu", augment=AugmentConfig(crop_padding=1, cutout=3))
    runtime = setup_runtime(cfg, seed=3)
    student, teacher = build_model("resnet18", 2, 1, 8), build_model("mobilenet_v2", 2, 1, 8)
    data = toy_data()
    ctx = MethodContext(input_shape=(1, 8, 8), student_arch="resnet18", teacher_arch="mobilenet_v2",
                        num_train=len(data["train"]))
    m = build_method(method, student, teacher.eval(), DistillConfig(method=method), 0.0, ctx)
    role = RoleConfig(arch="resnet18", epochs=EPOCHS, lr=0.01, optimizer="adamw")
    result = fit(m, role, cfg, data, runtime, seed=3, logger=logger, checkpoints=checkpoints)
    return m, result


def same_run(a, b):
    (ma, ra), (mb, rb) = a, b
    sa, sb = ma.state_dict(), mb.state_dict()
    assert list(sa) == list(sb) and list(ra.last_state) == list(rb.last_state)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    for k in ra.last_state:
        assert torch.equal(ra.last_state[k], rb.last_state[k]), k
    strip = lambda h: [{k: v for k, v in e.items() if k != "epoch_seconds"} for e in h]
    assert strip(ra.history) == strip(rb.history)
    assert (ra.best_epoch, ra.best_val_accuracy, ra.best_val_loss) == (rb.best_epoch, rb.best_val_accuracy, rb.best_val_loss)


@pytest.fixture(scope="module")
def uninterrupted():
    return run_fit()


def interrupted(tmp_path, at=3):
    ckpt = EpochCheckpoints(tmp_path / "state", run_id="run")
    with pytest.raises(Interrupt):
        run_fit(ckpt, StopAt(at))
    return ckpt


def test_interrupted_fit_resumes_to_the_same_result(tmp_path, uninterrupted, caplog):
    ckpt = interrupted(tmp_path)
    assert sorted(p.name for p in ckpt.dir.iterdir()) == [
        "epoch-0001.pt", "epoch-0001.pt.sha256", "epoch-0002.pt", "epoch-0002.pt.sha256"]
    logger = StopAt()
    caplog.set_level("INFO", logger="kdpipe")
    resumed = run_fit(EpochCheckpoints(tmp_path / "state", run_id="run"), logger)
    assert "resuming from" in caplog.text and "epoch-0002.pt (epoch 2 complete)" in caplog.text  # not a fresh run
    assert "not resumed" not in caplog.text
    same_run(uninterrupted, resumed)
    assert logger.logged == [1, 2, 3, 4]  # the saved epochs are logged again, then the new ones
    # two kept; none after the last epoch (the stage writes the model itself then)
    assert sorted(p.name for p in ckpt.dir.glob("epoch-*.pt")) == ["epoch-0002.pt", "epoch-0003.pt"]


def test_crd_resumes_with_its_memory_banks_and_negatives(tmp_path, caplog):
    # crd's banks are buffers and its negatives come from the global RNG: both must come back
    straight = run_fit(method="crd")
    with pytest.raises(Interrupt):
        run_fit(EpochCheckpoints(tmp_path / "state", run_id="run"), StopAt(3), method="crd")
    caplog.set_level("INFO", logger="kdpipe")
    resumed = run_fit(EpochCheckpoints(tmp_path / "state", run_id="run"), method="crd")
    assert "resuming from" in caplog.text
    same_run(straight, resumed)  # (compares the method's state: heads and both banks)


def test_corrupted_latest_state_falls_back_to_the_previous_epoch(tmp_path, uninterrupted, caplog):
    ckpt = interrupted(tmp_path)
    latest = ckpt.dir / "epoch-0002.pt"
    data = bytearray(latest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    latest.write_bytes(bytes(data))
    caplog.set_level("INFO", logger="kdpipe")
    resumed = run_fit(EpochCheckpoints(tmp_path / "state", run_id="run"))
    assert "SHA-256 mismatch" in caplog.text
    assert "epoch-0001.pt (epoch 1 complete)" in caplog.text  # resumed from the previous epoch
    same_run(uninterrupted, resumed)


def test_partial_foreign_and_finished_state_is_not_resumed(tmp_path, caplog):
    ckpt = interrupted(tmp_path)
    (ckpt.dir / "epoch-0002.pt.sha256").unlink()  # killed between the two writes
    (ckpt.dir / ".epoch-0003.pt.abc.tmp").write_bytes(b"half")  # killed inside a write
    # what fit looks for: the run id bound to the resolved device, precision, processes, threads, layout, GEMM
    rt = setup_runtime(TrainConfig(device="cpu"), seed=0)
    bound = ckpt.bound_to("cpu", rt.precision, 1, torch.get_num_threads(), rt.channels_last, rt.small_conv_gemm)
    assert bound.latest()["epoch"] == 1
    assert "interrupted" in caplog.text and not list(ckpt.dir.glob(".*.tmp"))
    assert EpochCheckpoints(ckpt.dir, run_id="other params").latest() is None
    assert "other params, data, teacher or code" in caplog.text and not list(ckpt.dir.glob("epoch-*"))

    ckpt = interrupted(tmp_path / "again")
    assert list(ckpt.dir.glob("epoch-*.pt"))
    ckpt.finish()  # outputs written: the state is removed, and the next run starts afresh
    assert not ckpt.dir.exists()
    assert ckpt.latest() is None and not list(ckpt.dir.iterdir())


def test_a_failed_state_write_stops_clearly_and_keeps_the_previous_epoch(tmp_path, monkeypatch, uninterrupted, caplog):
    real = resume.write_with
    calls = []

    def disk_full_at_epoch_2(path, writer):
        calls.append(path)
        if "epoch-0002" in str(path):
            def partial(tmp):
                tmp.write_bytes(b"partial")
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(path, partial)
        return real(path, writer)

    monkeypatch.setattr(resume, "write_with", disk_full_at_epoch_2)
    ckpt = EpochCheckpoints(tmp_path / "state", run_id="run")
    with pytest.raises(CheckpointWriteError, match=r"epoch-0002\.pt \(No space left on device\); epoch 1 is kept"):
        run_fit(ckpt)
    assert sorted(p.name for p in ckpt.dir.iterdir()) == ["epoch-0001.pt", "epoch-0001.pt.sha256"]
    monkeypatch.setattr(resume, "write_with", real)
    caplog.set_level("INFO", logger="kdpipe")
    resumed = run_fit(EpochCheckpoints(tmp_path / "state", run_id="run"))
    assert "epoch-0001.pt (epoch 1 complete)" in caplog.text
    same_run(uninterrupted, resumed)


class NaNAtStep(Method):
    """Cross-entropy whose loss term turns NaN at the 3rd training step."""

    needs_teacher = False

    def setup(self):
        self.steps = 0

    def forward(self, batch):
        logits = self.student(batch.images)
        self.steps += 1
        ce = self.cross_entropy(logits, batch.labels)
        bad = ce * float("nan") if self.steps == 3 else ce
        return logits, bad, {"ce": bad.detach()}


def test_non_finite_loss_names_the_step_and_terms():
    cfg = TrainConfig(batch_size=32, device="cpu")
    runtime = setup_runtime(cfg, seed=3)
    method = NaNAtStep(build_model("resnet18", 2, 1, 8), None)
    role = RoleConfig(arch="resnet18", epochs=2, lr=0.01)
    with pytest.raises(NonFiniteLossError) as err:
        fit(method, role, cfg, toy_data(), runtime, seed=3, desc="student")
    # 96 images at batch 32: steps 1-3 are epoch 1; the third is the bad one
    assert "step 3 (epoch 1, batch 3/3): loss=nan, ce=nan" in str(err.value)
    assert "student.lr" in str(err.value)
