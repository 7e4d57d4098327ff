"""DVC-level faults on a reproduced workspace: two `dvc repro` at once, and an experiment queue
whose processes are killed mid-run.

What DVC 3.67.1 does (read from its source, dvc/stage/decorators.py, dvc/rwlock.py,
dvc/repo/experiments/queue/celery.py, and checked by these tests):

* `dvc repro` holds the repository lock (.dvc/tmp/lock) only while it plans and bookkeeps; it
  *releases* it while a stage's command runs (`unlocked_repo`) and keeps per-path read/write locks
  in .dvc/tmp/rwlock instead (deps read, outs written). A second `dvc repro` started while the
  first is inside a stage's command therefore gets the repository lock, and fails at its first
  stage whose outputs overlap a path the first one holds:
      ERROR: failed to reproduce 'prepare': '<ws>/metrics/prepare.json' is busy, it is being
      blocked by:
        (PID <pid of the first dvc>): <...>/dvc repro
      If there are no processes with such PIDs, you can manually remove '<ws>/.dvc/tmp/rwlock'
      and try again.
  (The path named is not always the overlapping one: DVC reports the last path it compared.)
  Only if the second arrives while the first is between stages does it see the repository lock
  instead: "Unable to acquire lock. Most likely another DVC process is running or was terminated
  abruptly." after about 3 s of retries.
* `dvc exp run --run-all` only *follows* the queue: it spawns a celery worker (`dvc exp
  queue-worker`) in its own process group, which runs each experiment (`dvc exp exec-run`) in a
  temporary copy under .dvc/tmp/exps/. Killing the foreground command's process group leaves the
  worker and the experiment running (the same as Ctrl+C, after which DVC prints "Experiment(s) are
  still executing in the background"). If the worker and the experiment are killed too (a crash,
  an OOM kill), the task stays "Running" in `dvc queue status` with "Worker status: 0 active"; no
  process or message ever completes it, and `dvc exp run --run-all` then runs the other queued
  experiments but follows the dead one forever (tried by hand: still waiting after 150 s, with
  the other experiment done). `dvc queue kill <name>` then finds no process (DVC logs
  "Process '<task id>' had already aborted unexpectedly.") and marks the task "Failed". The
  workspace, its git branch and its metrics are never touched by a queued experiment. A failed
  task is not retried: queue the experiment again. The killed run's temporary copy
  (.dvc/tmp/exps/tmpXXXXXXXX, ~200 MB of models here) stays behind: neither `dvc exp clean` nor
  `dvc queue remove --failed` deletes it; remove it by hand when no experiment is running.
"""

import json
import os
import re
import shlex
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
import yaml

from conftest import ROOT, run, tool_env, write_params

# Experiments that re-run only the evaluate stage, made cheap: test split only, one timing run,
# one feature-map image (evaluate is the costliest stage to re-run; these take ~25 s each).
CHEAP_EVALUATE = {"evaluate.splits": ["test"], "evaluate.latency_warmup": 0, "evaluate.latency_runs": 1,
                  "evaluate.throughput_runs": 1, "evaluate.feature_map_images": 1}


def popen(cmd: list[str], ws: Path) -> subprocess.Popen:
    """`cmd` in its own process group (session), stdout+stderr merged, line by line."""
    env = tool_env()
    env["PYTHONUNBUFFERED"] = "1"
    return subprocess.Popen(cmd, cwd=ws, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def read_until(proc: subprocess.Popen, marker: str, seen: list[str]) -> None:
    for line in proc.stdout:
        seen.append(line)
        if marker in line:
            return
    raise AssertionError(f"{proc.args} ended before printing {marker!r}:\n{''.join(seen)}")


def wait_for_descendant(proc: subprocess.Popen, needle: str, timeout: float = 120) -> psutil.Process:
    """The process under `proc` whose command line contains `needle` (e.g. a stage's command)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in psutil.Process(proc.pid).children(recursive=True):
            try:
                if needle in " ".join(child.cmdline()):
                    return child
            except psutil.NoSuchProcess:
                continue
        assert proc.poll() is None, f"{proc.args} exited ({proc.returncode}) before running {needle!r}"
        time.sleep(0.2)
    raise AssertionError(f"no process running {needle!r} under {proc.args} after {timeout} s")


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def kill_processes_in(ws: Path) -> None:
    """SIGKILL whatever this test left running with its working directory inside ``ws``."""
    for proc in psutil.process_iter(["pid", "cwd"]):
        cwd = proc.info.get("cwd")
        if cwd and (cwd == str(ws) or cwd.startswith(str(ws) + os.sep)) and proc.pid != os.getpid():
            try:
                proc.kill()
            except psutil.Error:
                pass


def dvc_status(ws: Path) -> dict:
    # `dvc status` with no target also reports compare/dvc.yaml, a pipeline `dvc repro` does not run
    return json.loads(run(["dvc", "status", "--json", "dvc.yaml"], ws).stdout)


def rwlock_holders(ws: Path) -> dict:
    lock = json.loads((ws / ".dvc/tmp/rwlock").read_text() or "{}")
    return {mode: paths for mode, paths in lock.items() if paths}


@pytest.mark.integration
def test_second_repro_fails_on_the_lock_while_the_first_finishes(reproduced):
    ws = reproduced
    write_params(ws, **CHEAP_EVALUATE)   # only the evaluate stage must re-run
    first = popen(["dvc", "repro"], ws)
    try:
        seen: list[str] = []
        read_until(first, "Running stage 'evaluate'", seen)
        # inside the stage's command: DVC has released the repository lock, holds the rwlock
        wait_for_descendant(first, "src/evaluate.py")
        started = time.monotonic()
        second = run(["dvc", "repro"], ws, check=False, timeout=120)
        second_s = time.monotonic() - started
        assert first.poll() is None, "the first dvc repro ended before the second one was tried"
        rest, _ = first.communicate(timeout=600)
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait()
    out = "".join(seen) + rest

    assert second.returncode != 0, second.stdout
    assert second_s < 60, f"the second dvc repro took {second_s:.0f} s to give up"
    message = second.stderr
    blocked = re.search(r"is busy, it is being blocked by:\s*\(PID (\d+)\): .*dvc repro", message)
    assert blocked, message
    assert int(blocked.group(1)) == first.pid, message
    assert "you can manually remove" in message and ".dvc/tmp/rwlock" in message, message
    assert "Running stage" not in second.stdout, second.stdout

    assert first.returncode == 0, out
    for skipped in ("prepare", "train_teacher", "train_assistant", "distill_student", "quantize"):
        assert f"Stage '{skipped}' didn't change, skipping" in out, out
    assert dvc_status(ws) == {}
    assert rwlock_holders(ws) == {}, "a lock was left behind"
    locked = yaml.safe_load((ws / "dvc.lock").read_text())["stages"]["evaluate"]["params"]["params.yaml"]
    assert locked["evaluate"]["throughput_runs"] == 1 and locked["evaluate"]["splits"] == ["test"], locked


def queue_names(ws: Path) -> dict[str, list[str]]:
    """{status: [experiment names]} from `dvc queue status` (tasks of one name can repeat)."""
    table = run(["dvc", "queue", "status"], ws).stdout
    rows: dict[str, list[str]] = {}
    for line in table.splitlines():
        m = re.match(r"^[0-9a-f]{7}\s+(\S+)\s+.*\s(Queued|Running|Success|Failed)\s*$", line)
        if m:
            rows.setdefault(m.group(2), []).append(m.group(1))
    return {k: sorted(v) for k, v in rows.items()}


def experiments(ws: Path) -> list[dict]:
    """Every experiment of `dvc exp show --json` (queued, running, failed or done): name, executor
    state ("queued", "running", "failed", "success"), params.yaml and metrics."""
    found = []
    for row in json.loads(run(["dvc", "exp", "show", "--json"], ws).stdout):
        for exp in row.get("experiments") or []:
            rev = exp["revs"][0]
            data = rev.get("data") or {}
            found.append({
                "name": exp["name"],
                "state": (exp.get("executor") or {}).get("state"),
                "error": (rev.get("error") or {}).get("msg"),
                "params": data.get("params", {}).get("params.yaml", {}).get("data", {}),
                "metrics": {path: m.get("data") for path, m in data.get("metrics", {}).items()},
            })
    return found


def states(ws: Path) -> list[tuple[str, str]]:
    return sorted((e["name"], e["state"]) for e in experiments(ws))


QUEUED = {"evq1": 1, "evq2": 2}   # name -> evaluate.throughput_runs


def queue(ws: Path, name: str) -> None:
    present = yaml.safe_load((ws / "params.yaml").read_text())
    args = ["dvc", "exp", "run", "--queue", "-n", name]
    for key, value in {**CHEAP_EVALUATE, "evaluate.throughput_runs": QUEUED[name]}.items():
        section, field = key.split(".")
        if field not in present[section]:   # a key params.yaml leaves to its default: Hydra's `+` adds it
            key = f"+{key}"
        if isinstance(value, list):
            value = f"[{','.join(value)}]"
        args += ["-S", f"{key}={value}"]
    run(args, ws)


@pytest.mark.integration
def test_killed_experiment_queue_leaves_workspace_and_reruns(reproduced):
    ws = reproduced
    head = run(["git", "rev-parse", "HEAD"], ws).stdout.strip()
    kept = {rel: (ws / rel).read_bytes() for rel in ("dvc.lock", "params.yaml", "metrics/evaluate.json")}
    for name in QUEUED:
        queue(ws, name)
    assert queue_names(ws) == {"Queued": ["evq1", "evq2"]}

    follower = popen(["dvc", "exp", "run", "--run-all"], ws)
    try:
        seen: list[str] = []
        read_until(follower, "Running stage 'evaluate'", seen)
        assert "Reproducing experiment 'evq1'" in "".join(seen), "".join(seen)
        stage = wait_for_descendant(follower, "src/evaluate.py")
        tree = psutil.Process(follower.pid).children(recursive=True)
        assert any("queue-worker" in " ".join(p.cmdline()) for p in tree), [p.cmdline() for p in tree]

        # 1. kill the foreground `dvc exp run --run-all` (its process group): DVC's worker and the
        #    experiment live in another process group and keep going
        os.killpg(follower.pid, signal.SIGKILL)
        follower.wait()
        assert alive(stage), "the experiment died with the command that followed it"
        assert queue_names(ws).get("Running") == ["evq1"]

        # 2. a crash: SIGKILL every process group the run started (worker, experiment, stage)
        groups = {os.getpgid(p.pid) for p in tree if alive(p)} - {os.getpgid(0)}
        assert groups, "nothing left to kill"
        for group in groups:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 30
        while any(alive(p) for p in tree) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(alive(p) for p in tree), [p.pid for p in tree if alive(p)]

        # the workspace is untouched: same commit, no change in git or DVC, same metrics
        assert run(["git", "rev-parse", "HEAD"], ws).stdout.strip() == head
        assert run(["git", "status", "--porcelain"], ws).stdout == ""
        assert dvc_status(ws) == {}
        assert {rel: (ws / rel).read_bytes() for rel in kept} == kept
        assert run(["dvc", "exp", "list", "--name-only"], ws).stdout.strip() == "", "an experiment was saved"
        # the killed task is still reported as running, by nobody; the other one is still queued
        assert queue_names(ws) == {"Running": ["evq1"], "Queued": ["evq2"]}
        assert "Worker status: 0 active" in run(["dvc", "queue", "status"], ws).stdout
        assert states(ws) == [("evq1", "running"), ("evq2", "queued")]

        # `dvc queue kill` finds no process and marks the task failed
        run(["dvc", "queue", "kill", "evq1"], ws)
        assert queue_names(ws) == {"Failed": ["evq1"], "Queued": ["evq2"]}
        assert states(ws) == [("evq1", "failed"), ("evq2", "queued")]

        # queue the failed experiment again and run the queue: both complete
        queue(ws, "evq1")
        rerun = run(["dvc", "exp", "run", "--run-all"], ws, timeout=400)
        assert "Failed to reproduce" not in rerun.stdout + rerun.stderr, rerun.stdout + rerun.stderr
        assert queue_names(ws) == {"Failed": ["evq1"], "Success": ["evq1", "evq2"]}
        assert sorted(run(["dvc", "exp", "list", "--name-only"], ws).stdout.split()) == ["evq1", "evq2"]
        assert states(ws) == [("evq1", "failed"), ("evq1", "success"), ("evq2", "success")]
        done = {e["name"]: e for e in experiments(ws) if e["state"] == "success"}
        for name, runs in QUEUED.items():
            evaluate = done[name]["params"]["evaluate"]
            assert (evaluate["throughput_runs"], evaluate["splits"]) == (runs, ["test"]), evaluate
            metrics = done[name]["metrics"]
            assert 0.0 <= metrics["metrics/evaluate.json"]["student_int8"]["accuracy"] <= 1.0
            # what `dvc exp show` lists: the stages' summaries, not the per-split detail (and the
            # method comparison's cells, compare/dvc.yaml's `metrics:`, never run in this workspace)
            default = {m for m in metrics if not m.startswith("metrics/compare/")}
            assert default == {"metrics/evaluate.json", "metrics/quantize.json", "metrics/train_teacher.json",
                               "metrics/train_assistant.json", "metrics/train_student.json",
                               "metrics/train_student_no_kd.json"}, list(metrics)
            assert set(metrics["metrics/evaluate.json"]["student"]) == {
                "accuracy", "f1_macro", "ece", "size_mb", "latency_ms"}
        # and still nothing in the workspace changed
        assert run(["git", "status", "--porcelain"], ws).stdout == ""
        assert {rel: (ws / rel).read_bytes() for rel in kept} == kept
    finally:
        if follower.poll() is None:
            os.killpg(follower.pid, signal.SIGKILL)
            follower.wait()
        kill_processes_in(ws)


@pytest.mark.integration
def test_single_item_with_a_missing_upstream_file_loses_nothing(reproduced):
    """DVC removes a stage's outputs before running it, so `--single-item` with a deleted upstream
    file leaves the stage's outputs gone and an error; everything comes back from the DVC cache and
    git, byte for byte, and a plain `dvc repro` rebuilds the upstream file first."""
    outputs = ["models/assistant.pt", "metrics/train_assistant.json", "plots/train/assistant/plots/metrics/val/acc.tsv"]
    before = {rel: (reproduced / rel).read_bytes() for rel in outputs}
    (reproduced / "models/teacher.pt").unlink()
    failed = run(["dvc", "repro", "train_assistant", "--single-item"], reproduced, check=False)
    assert failed.returncode != 0
    assert not (reproduced / "models/assistant.pt").exists()
    run(["dvc", "checkout"], reproduced)
    run(["git", "checkout", "--", "metrics", "plots"], reproduced)
    assert {rel: (reproduced / rel).read_bytes() for rel in outputs} == before
    assert (reproduced / "models/teacher.pt").is_file()
    assert run(["dvc", "status", "dvc.yaml", "--json"], reproduced).stdout.strip() == "{}"


@pytest.mark.integration
def test_a_queued_grid_runs_two_at_a_time_and_shows_in_exp_show(reproduced):
    """The README's grid: one queued experiment per value, two workers, then `dvc exp show`."""
    ws = reproduced
    run(["dvc", "exp", "run", "--queue", "-S", "distill.temperature=2,8"], ws)
    assert len(queue_names(ws).get("Queued", [])) == 2
    run(["dvc", "queue", "start", "-j", "2"], ws)
    deadline = time.monotonic() + 900
    while time.monotonic() < deadline:
        names = queue_names(ws)
        if not names.get("Queued") and not names.get("Running"):
            break
        time.sleep(3)
    assert len(queue_names(ws).get("Success", [])) == 2, queue_names(ws)
    done = [e for e in experiments(ws) if e["state"] == "success"]
    assert sorted(e["params"]["distill"]["temperature"] for e in done) == [2, 8]
    for e in done:
        assert 0.0 <= e["metrics"]["metrics/evaluate.json"]["student"]["accuracy"] <= 1.0
    # the README's invocation fits a 120-column terminal, no column cut off
    command = next(line for line in (ROOT / "README.md").read_text().splitlines() if line.startswith("dvc exp show"))
    table = subprocess.run([*shlex.split(command.split("  #")[0]), "--no-pager"], cwd=ws, capture_output=True,
                           text=True, env={**tool_env(), "COLUMNS": "120"}, check=True).stdout
    assert "distill.temperature" in table and "student.accuracy" in table and "…" not in table, table
