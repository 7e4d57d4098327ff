"""Bring your own teacher, through DVC: the default run's teacher imported with
``teacher.checkpoint`` and ``teacher.epochs: 0`` re-creates the teacher stage without training."""

import json
import shutil

import pytest
import torch
import yaml

from conftest import run


@pytest.mark.integration
def test_the_default_runs_teacher_imported_gives_the_same_stage_without_training(reproduced):
    ws = reproduced
    before = json.loads((ws / "metrics/train_teacher.json").read_text())
    original = torch.load(ws / "models/teacher.pt", weights_only=True)["state_dict"]
    (ws / "models/imported").mkdir(parents=True, exist_ok=True)
    shutil.copy(ws / "models/teacher.pt", ws / "models/imported/teacher.pt")
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["teacher"].update(checkpoint="models/imported/teacher.pt", epochs=0)
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    out = run(["dvc", "repro", "train_teacher"], ws).stdout
    assert "Running stage 'train_teacher'" in out and "teacher epoch" not in out  # not one epoch trained
    after = json.loads((ws / "metrics/train_teacher.json").read_text())
    assert after["best_val_accuracy"] == before["best_val_accuracy"]
    assert (after["epochs"], after["best_epoch"], after["checkpoint"]) == (0, 0, "models/imported/teacher.pt")
    imported = torch.load(ws / "models/teacher.pt", weights_only=True)["state_dict"]
    assert imported.keys() == original.keys() and all(torch.equal(imported[k], original[k]) for k in original)

    # a changed file in models/imported re-runs the stage: the folder is a dependency
    assert "Running stage 'train_teacher'" not in run(["dvc", "repro", "train_teacher"], ws).stdout
    torch.save({k: v + 0 for k, v in original.items()}, ws / "models/imported/teacher.pt")  # same tensors, new bytes
    assert "Running stage 'train_teacher'" in run(["dvc", "repro", "train_teacher"], ws).stdout


@pytest.mark.integration
def test_an_onnx_teacher_is_imported_and_distils_a_student_with_kd(reproduced):
    """The default run's teacher exported to ONNX, imported with arch onnx: the teacher stage
    scores it on validation without training, and the student learns from it with kd (ONNX
    Runtime runs the teacher); a feature method is refused, naming the key."""
    from kdpipe.models.checkpoint import load_checkpoint
    from kdpipe.onnx_export import export_onnx

    ws = reproduced
    before = json.loads((ws / "metrics/train_teacher.json").read_text())
    val_images = json.loads((ws / "metrics/prepare.json").read_text())["counts"]["val"]
    network, info = load_checkpoint(ws / "models/teacher.pt")
    (ws / "models/imported").mkdir(parents=True, exist_ok=True)
    export_onnx(network, info, ws / "models/imported/teacher.onnx", opset=18)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["teacher"].update(arch="onnx", checkpoint="models/imported/teacher.onnx", epochs=0)
    params["distill"].update(teacher="teacher", method="kd")
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    proc = run(["dvc", "repro", "distill_student"], ws)
    out = proc.stdout + proc.stderr
    assert "teacher epoch" not in out and "student: resnet18" in out and "method kd from teacher" in out
    after = json.loads((ws / "metrics/train_teacher.json").read_text())
    assert after["arch"] == "onnx" and after["epochs"] == 0 and after["params"] == 0
    # fp32 ONNX Runtime against the PyTorch run's precision (bf16 where the CPU has it): one image at most
    assert abs(after["best_val_accuracy"] - before["best_val_accuracy"]) <= 1 / val_images + 1e-9
    student = json.loads((ws / "metrics/train_student.json").read_text())
    assert student["method"] == "kd" and student["teacher"] == "teacher" and student["best_val_accuracy"] > 0.25

    params["distill"]["method"] = "at"
    (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    failed = run(["dvc", "repro", "distill_student"], ws, check=False)
    assert failed.returncode != 0
    assert "distill.method: 'at' reads the teacher's features" in failed.stdout + failed.stderr
