import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["src", "benchmarks", "data/raw", "compare", "models/imported", "dvc.yaml", "params.yaml", ".dvc/config", ".dvc/plots", ".dvcignore", ".gitignore"]


def load_default_params() -> dict:
    return yaml.safe_load((ROOT / "params.yaml").read_text())


def tool_env() -> dict:
    """Environment whose `python` and `dvc` are this interpreter's."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.pop("DVC_EXP_BASELINE_REV", None)
    return env


def run(cmd: list[str], cwd: Path, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, env=tool_env(), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def start(cmd: list[str], ws: Path) -> subprocess.Popen:
    # own process group: SIGKILL takes DVC and the stage's Python together, like a crash
    # output to a file: a pipe nobody reads would block a chatty child before the kill point
    log = tempfile.TemporaryFile(mode="w+")  # noqa: SIM115 (lives with proc; freed when the test drops it)
    proc = subprocess.Popen(cmd, cwd=ws, env=tool_env(), stdout=log, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    proc.log = log
    return proc


def output_of(proc: subprocess.Popen) -> str:
    proc.log.seek(0)
    return proc.log.read()


def kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> bool:
    """SIGKILL the process group as soon as ``ready()``; False if it ended first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    raise AssertionError(f"no kill point reached in {timeout}s:\n{output_of(proc)}")


def tiny_params(**overrides) -> dict:
    """The default params shrunk to seconds: small subsets, ResNet-18 everywhere, 4-6 epochs."""
    p = load_default_params()
    p["data"]["max_train_samples"] = 300
    p["data"]["max_test_samples"] = 100
    p["train"]["batch_size"] = 32
    for role, epochs in (("teacher", 6), ("assistant", 4), ("student", 4)):
        p[role]["arch"] = "resnet18"
        p[role]["epochs"] = epochs
    p["quantize"]["calibration_samples"] = 64
    p["quantize"]["qat"]["epochs"] = 1
    p["evaluate"]["latency_runs"] = 3
    p["evaluate"]["latency_warmup"] = 1
    for dotted, value in overrides.items():
        node = p
        *head, last = dotted.split(".")
        for key in head:
            node = node[key]
        node[last] = value
    return p


def make_workspace(ws: Path) -> Path:
    """A fresh git + DVC copy of the project at ``ws``, set to tiny params."""
    ws.mkdir()
    for rel in PROJECT_FILES:
        src = ROOT / rel
        if not src.exists():
            continue
        dst = ws / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_dir():  # (compare/dvc.lock records the real params' comparison, not the tiny one)
            shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "dvc.lock"))
        else:
            shutil.copy2(src, dst)
    (ws / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    run(["git", "init", "-q"], ws)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], ws)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], ws)
    return ws


def write_params(ws: Path, **overrides) -> None:
    (ws / "params.yaml").write_text(yaml.safe_dump(tiny_params(**overrides), sort_keys=False))


@pytest.fixture
def workspace(tmp_path: Path):
    return make_workspace(tmp_path / "ws")


def commit_all(ws: Path, message: str) -> None:
    run(["git", "add", "-A"], ws)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message], ws)


IMPORT_LOG = "repro-imports.log"  # beside the template workspace


@pytest.fixture(scope="session")
def reproduced_template(tmp_path_factory) -> Path:
    """One tiny `dvc repro` shared by the session's tests, committed (dvc.lock, metrics) with its
    DVC cache. Tests never touch it: they work on a copy from the `reproduced` fixture."""
    ws = make_workspace(tmp_path_factory.mktemp("reproduced") / "ws")
    # PYTHONPROFILEIMPORTTIME: every stage's Python lists what it imported (tests/test_dvc_yaml.py)
    log = ws.parent / IMPORT_LOG
    with open(log, "w") as out:
        proc = subprocess.run(["dvc", "repro"], cwd=ws, env={**tool_env(), "PYTHONPROFILEIMPORTTIME": "1"},
                              stdout=out, stderr=subprocess.STDOUT, timeout=1800)  # (minutes on 2 loaded cores)
    if proc.returncode != 0:
        raise AssertionError(f"dvc repro failed ({proc.returncode}):\n{log.read_text()[-20000:]}")
    commit_all(ws, "tiny default run")
    return ws


@pytest.fixture
def reproduced(reproduced_template: Path, tmp_path: Path) -> Path:
    """A private copy (git history, DVC cache, outputs) of the session's tiny reproduced run."""
    ws = tmp_path / "ws"
    shutil.copytree(reproduced_template, ws, symlinks=True)
    return ws
