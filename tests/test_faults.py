"""Faults on a real (tiny) reproduced pipeline: a stage killed with SIGKILL, then `dvc repro`,
ends with exactly the uninterrupted result; bad upstream files are refused clearly and leave
nothing half-written."""

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from conftest import commit_all, kill_when, run, start
from kdpipe.io import sha256_file

ROLE_OF_STAGE = {"train_teacher": "teacher", "train_assistant": "assistant", "distill_student": "student"}
ROLE_STAGE = {role: stage for stage, role in ROLE_OF_STAGE.items()}
ACCURACIES = ("best_val_accuracy", "last_val_accuracy", "best_epoch")


@pytest.mark.integration
@pytest.mark.parametrize("stage", list(ROLE_OF_STAGE))
def test_training_stage_killed_then_repro_resumes_to_the_same_result(reproduced, reproduced_template, stage):
    role = ROLE_OF_STAGE[stage]
    state = reproduced / ".kdpipe/resume" / role  # one folder per run fingerprint, outside DVC's outputs
    proc = start(["dvc", "repro", "--force", "--single-item", stage], reproduced)
    # killed in epoch 3 of 4-6, once epoch 2's state is complete (its hash file written last)
    assert kill_when(proc, lambda: any(state.glob("*/epoch-0002.pt.sha256"))), "the stage ended before the kill"
    assert not (reproduced / f"models/{role}.pt").exists()  # DVC removed it before the run; nothing new was made

    # --force: dvc.lock still records this stage's outputs, which are in the DVC cache, so a plain
    # `dvc repro` would check them out instead of running it (even with --no-run-cache); the case
    # resuming is for is a run whose result no cache holds, as a forced run
    again = run(["dvc", "repro", "--force", "--single-item", stage], reproduced)
    assert re.search(rf"resuming from \.kdpipe/resume/{role}/\w+/epoch-0002\.pt", again.stdout + again.stderr)
    # the same weights, byte for byte, so nothing downstream has to run again
    assert sha256_file(reproduced / f"models/{role}.pt") == sha256_file(reproduced_template / f"models/{role}.pt")
    assert "Running stage" not in run(["dvc", "repro"], reproduced).stdout
    metrics = f"metrics/train_{role}.json"
    new, old = (json.loads((ws / metrics).read_text()) for ws in (reproduced, reproduced_template))
    assert {k: new[k] for k in ACCURACIES} == {k: old[k] for k in ACCURACIES}
    assert not any(state.iterdir())  # the run's state is removed once its outputs are written
    assert run(["dvc", "status", "dvc.yaml", "--json"], reproduced).stdout.strip() == "{}"


@pytest.mark.integration
def test_prepare_killed_then_repro_rebuilds_the_same_data(reproduced, reproduced_template):
    data = reproduced / "data"
    # killed the moment prepare builds its folder aside (data/.prepared.*); that window is short,
    # so a run that ends first is followed by one killed while prepare's Python is decoding
    proc = start(["dvc", "repro", "--force", "--single-item", "prepare"], reproduced)
    if not kill_when(proc, lambda: any(data.glob(".prepared.*"))):
        # that run is a good one: dvc.lock records its metrics/prepare.json (new timings) and the
        # run-cache now restores it; it is the state the killed run below must come back to
        commit_all(reproduced, "a forced prepare run that ended before the kill")
        proc = start(["dvc", "repro", "--force", "--single-item", "prepare"], reproduced)
        seen: list[float] = []

        def prepare_running() -> bool:
            running = any("src/prepare.py" in " ".join(p.cmdline()) for p in psutil.Process(proc.pid).children(True))
            if running and not seen:
                seen.append(time.monotonic())
            return bool(seen) and time.monotonic() - seen[0] > 0.5

        assert kill_when(proc, prepare_running), "prepare ended before it could be killed"
    prepared = reproduced / "data/prepared"
    assert not (prepared / "meta.json").exists()  # no data set that looks complete
    refused = run_stage_script(reproduced, "train_teacher")  # nothing to train on, said clearly
    assert refused.returncode == 2 and "data/prepared/meta.json not found" in refused.stderr, refused.stderr
    # dvc.lock still records prepare's outputs and the DVC cache holds them: checked out, not re-run
    restored = run(["dvc", "repro"], reproduced)
    assert "Stage 'prepare' is cached - skipping run, checking out outputs" in restored.stdout, restored.stdout
    for name in ("train_x.npy", "val_y.npy", "test_x.npy", "meta.json"):
        assert sha256_file(prepared / name) == sha256_file(reproduced_template / "data/prepared" / name)
    assert run(["dvc", "status", "dvc.yaml", "--json"], reproduced).stdout.strip() == "{}"
    # what a killed run left aside is out of git's sight, and the next run of prepare removes it
    assert run(["git", "status", "--porcelain"], reproduced).stdout == ""
    run(["dvc", "repro", "--force", "--single-item", "prepare"], reproduced)
    assert not list(data.glob(".prepared.*"))


def run_stage_script(ws: Path, stage: str) -> subprocess.CompletedProcess:
    return run([sys.executable, f"src/{stage}.py"], ws, check=False)


@pytest.mark.integration
@pytest.mark.parametrize("damage", ["flipped byte", "truncated"])
def test_corrupted_prepared_data_is_refused(reproduced, damage):
    target = reproduced / "data/prepared/train_x.npy"
    data = bytearray(target.read_bytes())
    if damage == "flipped byte":
        data[-1] ^= 0xFF  # same size and shape: only the hash can tell
    else:
        data = data[: len(data) // 2]
    target.write_bytes(bytes(data))
    proc = run_stage_script(reproduced, "train_teacher")
    assert proc.returncode == 2, proc.stderr
    assert "data/prepared/train_x.npy" in proc.stderr and "re-run `dvc repro prepare`" in proc.stderr
    assert not (reproduced / "models/teacher.pt").exists()  # the old model is not left posing as the new one
    assert "Traceback" not in proc.stderr


@pytest.mark.integration
@pytest.mark.parametrize("fault", ["missing", "corrupt"])
@pytest.mark.parametrize("stage, upstream, outputs", [
    ("distill_student", "assistant", ["models/student.pt", "metrics/train_student.json"]),
    ("quantize", "student", ["models/student.onnx", "models/student_int8.onnx", "metrics/quantize.json"]),
])
def test_missing_or_corrupt_upstream_model_is_refused(reproduced, fault, stage, upstream, outputs):
    path = reproduced / f"models/{upstream}.pt"
    if fault == "missing":
        path.unlink()
    else:
        path.write_bytes(path.read_bytes()[:1000])  # a truncated copy
    proc = run_stage_script(reproduced, stage)
    assert proc.returncode == 2, proc.stderr
    expected = "not found" if fault == "missing" else "is not a readable kdpipe checkpoint"
    assert f"models/{upstream}.pt" in proc.stderr and expected in proc.stderr, proc.stderr
    assert f"dvc repro {ROLE_STAGE[upstream]}" in proc.stderr and "Traceback" not in proc.stderr
    for rel in outputs:  # the previous run's outputs are removed, not left to pass for new ones
        assert not (reproduced / rel).exists(), rel
