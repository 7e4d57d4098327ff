"""End to end: `dvc repro` on a tiny config in a temporary copy, then an experiment."""

import json

import numpy as np
import onnx
import pytest

from conftest import run
from kdpipe.onnx_export import onnx_logits, ort_session

EXPECTED_FILES = [
    "data/prepared/meta.json",
    "models/teacher.pt",
    "models/assistant.pt",
    "models/student.pt",
    "models/student.onnx",
    "models/student_int8.onnx",
    "metrics/prepare.json",
    "metrics/train_teacher.json",
    "metrics/train_assistant.json",
    "metrics/train_student.json",
    "metrics/quantize.json",
    "metrics/evaluate.json",
    "plots/train/teacher/plots/metrics/val/acc.tsv",
    "plots/train/student/plots/metrics/lr.tsv",
    "plots/evaluate/models.csv",
    "plots/evaluate/predictions_student_int8.csv",
    "dvc.lock",
]


@pytest.mark.integration
def test_dvc_repro_then_experiment(workspace):
    repro = run(["dvc", "repro"], workspace)
    for rel in EXPECTED_FILES:
        assert (workspace / rel).is_file(), f"{rel} missing after dvc repro:\n{repro.stdout}"

    ev = json.loads((workspace / "metrics/evaluate.json").read_text())
    assert set(ev) >= {"teacher", "assistant", "student", "student_int8"}
    for name in ("teacher", "assistant", "student", "student_int8"):
        row = ev[name]
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["params"] > 0 and row["size_mb"] > 0 and row["latency_ms"] > 0
    # 300 training digits, a few epochs: well above the 10% of chance, not yet converged
    for name in ("teacher", "assistant", "student", "student_int8"):
        assert ev[name]["accuracy"] > 0.25, (name, ev[name])
    assert ev["student_int8"]["size_mb"] < ev["student_onnx"]["size_mb"] / 3

    q = json.loads((workspace / "metrics/quantize.json").read_text())
    assert q["onnx_max_abs_diff"] <= q["onnx_atol"]
    model = onnx.load(str(workspace / "models/student.onnx"))
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["kdpipe.class_names"]) == [str(i) for i in range(10)]
    # the int8 file runs at any batch size
    x = np.zeros((3, 1, 8, 8), dtype=np.float32)
    assert onnx_logits(ort_session(workspace / "models/student_int8.onnx"), x).shape == (3, 10)

    assert "didn't change" in run(["dvc", "repro"], workspace).stdout
    status = run(["dvc", "status", "dvc.yaml"], workspace).stdout
    assert "changed" not in status

    run(["git", "add", "-A"], workspace)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "baseline run"], workspace)

    # a student-link change re-runs only the stages after the assistant
    exp = run(["dvc", "exp", "run", "-S", "distill.temperature=2"], workspace)
    ran = {s for s in ("prepare", "train_teacher", "train_assistant", "distill_student", "quantize", "evaluate")
           if f"Running stage '{s}'" in exp.stdout}
    assert ran == {"distill_student", "quantize", "evaluate"}, exp.stdout
    show = run(["dvc", "exp", "show", "--json"], workspace).stdout
    assert "distill.temperature" in show or '"temperature": 2' in show
    diff = run(["dvc", "metrics", "diff", "HEAD", "--json"], workspace).stdout
    assert "metrics/train_student.json" in diff
