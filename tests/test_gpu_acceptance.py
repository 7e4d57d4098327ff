"""benchmarks/gpu_acceptance.py's CPU rehearsal: every check runs end to end (tiny budgets)."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT, tool_env


@pytest.mark.integration
def test_smoke_runs_every_check_and_writes_the_verdicts(tmp_path):
    out = tmp_path / "verdicts.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks/gpu_acceptance.py"), "--smoke", "--out", str(out)],
        cwd=tmp_path, env=tool_env(), capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    report = json.loads(out.read_text())
    assert report["smoke"] is True
    assert set(report["checks"]) == {"data", "chain", "kd_step", "torchrun", "parity_export"}
    assert all(row["pass"] for row in report["checks"].values())
    ddp = report["checks"]["torchrun"]
    assert ddp["distributed"] is True and ddp["backend"] == "gloo"  # a real process group of one
    assert report["checks"]["kd_step"]["eager_tflops"] > 0
    assert "| torchrun | PASS |" in proc.stdout
    assert "import dvc" not in (ROOT / "benchmarks/gpu_acceptance.py").read_text()
