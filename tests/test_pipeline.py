"""End to end: `dvc repro` on a tiny config in a temporary copy, then an experiment."""

import json
import re
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from conftest import ROOT, run, write_params
from kdpipe.data.prepared import load_prepared
from kdpipe.onnx_export import onnx_logits, ort_session
from kdpipe.plots_page import network_scripts

EXPECTED_FILES = [
    "data/prepared/meta.json",
    "models/teacher.pt",
    "models/assistant.pt",
    "models/student.pt",
    "models/student_no_kd.pt",
    "models/student.onnx",
    "models/student_int8.onnx",
    "models/student_qat_int8.onnx",
    "models/student_dynamic_int8.onnx",
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


def check_predict_agrees_with_evaluate(ws, accuracy: float) -> None:
    """The prepared test images saved as PNG files, plus a broken one, through src/predict.py."""
    data = load_prepared(ws / "data/prepared", splits=("test",))
    folder = ws / "test_pngs"
    for i, (img, label) in enumerate(zip(data["test"].images, data["test"].labels)):
        (folder / data.meta.class_names[label]).mkdir(parents=True, exist_ok=True)
        Image.fromarray(img[0].numpy(), "L").save(folder / data.meta.class_names[label] / f"{i}.png")
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    proc = run([sys.executable, "src/predict.py", str(folder), "--model", "models/student_int8.onnx", "--topk", "3"],
               ws, check=False)
    assert proc.returncode == 1, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rows) == len(data["test"]) + 1
    errors = [r for r in rows if "error" in r]
    assert [Path(r["path"]).name for r in errors] == ["broken.png"]
    good = [r for r in rows if "error" not in r]
    hits = [r["label"] == Path(r["path"]).parent.name for r in good]
    assert sum(hits) / len(hits) == pytest.approx(accuracy, abs=1e-6)
    assert all(len(r["topk"]) == 3 and r["topk"][0]["label"] == r["label"] for r in good)


@pytest.mark.integration
def test_dvc_repro_then_experiment(workspace):
    repro = run(["dvc", "repro"], workspace)
    for rel in EXPECTED_FILES:
        assert (workspace / rel).is_file(), f"{rel} missing after dvc repro:\n{repro.stdout}"
    for role in ("teacher", "assistant", "student", "student_no_kd"):  # dvclive's own summary: `dvc plots show` can't draw it
        assert not (workspace / f"plots/train/{role}/metrics.json").exists()

    summary = json.loads((workspace / "metrics/evaluate.json").read_text())
    ev = json.loads((workspace / "metrics/evaluate_detail.json").read_text())
    assert summary == {name: {k: row[k] for k in ("accuracy", "f1_macro", "ece", "size_mb", "latency_ms")}
                       for name, row in ev.items()}
    deployed = ("student_onnx", "student_int8", "student_dynamic_int8", "student_qat")
    assert set(ev) == {"teacher", "assistant", "student", "student_no_kd", *deployed}
    metric_keys = {"accuracy", "top3_accuracy", "auc_macro", "auc_micro", "auc_weighted", "ece", "nll", "brier",
                   "macs", "params", "size_mb", "latency_ms"}
    metric_keys |= {f"{m}_{a}" for m in ("precision", "recall", "f1") for a in ("micro", "macro", "weighted")}
    for name, row in ev.items():
        assert metric_keys <= set(row), (name, metric_keys - set(row))
        assert (name == "teacher") != ("teacher_agreement" in row and "teacher_kl" in row)
        assert 0.0 <= row["ece"] <= 1.0 and row["top3_accuracy"] >= row["accuracy"]
        assert 0.0 <= row["accuracy"] <= 1.0
        assert row["params"] > 0 and row["size_mb"] > 0 and row["latency_ms"] > 0 and row["throughput_b64"] > 0
        assert row["speedup_vs_student"] == pytest.approx(ev["student"]["latency_ms"] / row["latency_ms"], rel=1e-2)
    # 300 training digits, a few epochs: well above the 10% of chance, not yet converged
    for name in ("teacher", "assistant", "student", "student_int8"):
        assert ev[name]["accuracy"] > 0.25, (name, ev[name])
    for name in ("student_int8", "student_qat", "student_dynamic_int8"):
        assert ev[name]["size_mb"] < ev["student_onnx"]["size_mb"] / 3
    # (how close int8 stays to fp32 is a property of a trained model, checked on the committed
    # default run below; this student, 4 epochs on 300 images, is far from trained)

    q = json.loads((workspace / "metrics/quantize.json").read_text())
    assert q["onnx_max_abs_diff"] <= q["onnx_atol"] and q["qat_onnx_max_abs_diff"] <= q["onnx_atol"]
    assert q["qat_epochs"] == 1 and 1 <= q["qat_best_epoch"] <= 1
    model = onnx.load(str(workspace / "models/student.onnx"))
    onnx.checker.check_model(model)
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch axis
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["kdpipe.class_names"]) == [str(i) for i in range(10)]
    # the int8 file runs at any batch size
    x = np.zeros((3, 1, 8, 8), dtype=np.float32)
    assert onnx_logits(ort_session(workspace / "models/student_int8.onnx"), x).shape == (3, 10)

    splits = json.loads((workspace / "metrics/evaluate_splits.json").read_text())
    assert set(splits) == {"train", "val"} and set(splits["val"]) == set(ev)
    for role in ("teacher", "assistant", "student"):
        for layer in ("early", "middle"):
            assert (workspace / f"plots/evaluate/feature_maps/{role}_{layer}.png").stat().st_size > 1000
    for name in ev:
        assert (workspace / f"plots/evaluate/confusion/{name}.png").is_file()
        report = json.loads((workspace / f"plots/evaluate/reports/{name}.json").read_text())
        assert len(report["confusion_matrix"]) == 10 and "macro avg" in report["classification_report"]

    check_predict_agrees_with_evaluate(workspace, ev["student_int8"]["accuracy"])
    bench = run([sys.executable, "benchmarks/deploy.py", "--runs", "2"], workspace, check=False)
    assert bench.returncode in (0, 1), bench.stderr  # 1: a goal missed by this barely trained model
    assert "models/student_int8.onnx" in bench.stdout and "x faster than the fp32 student" in bench.stdout

    assert "didn't change" in run(["dvc", "repro"], workspace).stdout
    status = run(["dvc", "status", "dvc.yaml"], workspace).stdout
    assert "changed" not in status

    run(["git", "add", "-A"], workspace)
    run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "baseline run"], workspace)

    # a student-link change re-runs only the stages after the assistant
    exp = run(["dvc", "exp", "run", "-S", "distill.temperature=2"], workspace)
    ran = set(re.findall(r"Running stage '(\w+)'", exp.stdout))
    assert ran == {"distill_student", "quantize", "evaluate", "figures"}, exp.stdout
    show = run(["dvc", "exp", "show", "--json"], workspace).stdout
    assert "distill.temperature" in show or '"temperature": 2' in show
    diff = run(["dvc", "metrics", "diff", "HEAD", "--json"], workspace).stdout
    assert "metrics/train_student.json" in diff
    run(["dvc", "plots", "diff", "HEAD~1", "-o", "plots_diff"], workspace)
    page = workspace / "plots_diff" / "index.html"
    assert page.is_file() and network_scripts(page) == [] and 'id = "Validation_accuracy"' in page.read_text()


@pytest.mark.integration
def test_a_timm_student_trains_exports_and_quantizes(workspace):
    """`-S student.arch=timm:mobilenetv3_small_050` through the whole default pipeline."""
    write_params(workspace, **{"student.arch": "timm:mobilenetv3_small_050", "teacher.epochs": 2,
                               "assistant.epochs": 1, "student.epochs": 2})
    repro = run(["dvc", "repro"], workspace)
    assert "student: timm:mobilenetv3_small_050" in repro.stderr + repro.stdout
    ev = json.loads((workspace / "metrics/evaluate_detail.json").read_text())
    assert {"student", "student_onnx", "student_int8", "student_dynamic_int8", "student_qat"} <= set(ev)
    assert ev["student_onnx"]["accuracy"] == ev["student"]["accuracy"]  # the exported file is the model
    assert ev["student_int8"]["size_mb"] < ev["student_onnx"]["size_mb"] / 2
    props = {p.key: p.value for p in onnx.load(str(workspace / "models/student_int8.onnx")).metadata_props}
    assert props["kdpipe.arch"] == "timm:mobilenetv3_small_050"
    layers = json.loads((workspace / "metrics/quantize_layers.json").read_text())
    assert layers["int8"]["activations"], "the per-layer report compares the timm graph's activations"


def test_committed_int8_students_stay_within_one_point_of_fp32():
    """The committed default run (re-validated by CI): every int8 file within 1 pt of fp32 ONNX
    on the 360 test images."""
    ev = json.loads((ROOT / "metrics/evaluate.json").read_text())
    for name in ("student_int8", "student_qat", "student_dynamic_int8"):
        assert ev[name]["accuracy"] >= ev["student_onnx"]["accuracy"] - 0.01, (name, ev[name], ev["student_onnx"])
