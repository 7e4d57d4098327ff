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
