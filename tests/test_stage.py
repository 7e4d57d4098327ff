
from conftest import run
from kdpipe.stage import declared_outputs


def test_declared_outputs_resolve_templates(workspace, monkeypatch):
    monkeypatch.chdir(workspace)
    outs = {str(p) for p in declared_outputs("distill_student")}
    assert outs == {"models/student.pt", "metrics/train_student.json", "plots/train/student"}
    assert "models/assistant.pt" not in {str(p) for p in declared_outputs("distill_student")}


def test_missing_teacher_checkpoint_is_a_clear_error_and_leaves_nothing(workspace):
    run(["python", "src/prepare.py"], workspace)
    (workspace / "models").mkdir(exist_ok=True)
    (workspace / "models" / "assistant.pt").write_bytes(b"stale half-written file")
    proc = run(["python", "src/train_assistant.py"], workspace, check=False)
    assert proc.returncode == 2
    assert "models/teacher.pt not found" in proc.stderr and "dvc repro train_teacher" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (workspace / "models" / "assistant.pt").exists()


def test_bad_params_fail_before_any_work(workspace):
    text = (workspace / "params.yaml").read_text().replace("temperature:", "temprature:", 1)
    (workspace / "params.yaml").write_text(text)
    proc = run(["python", "src/prepare.py"], workspace, check=False)
    assert proc.returncode == 2
    assert "temprature" in proc.stderr and "did you mean 'temperature'" in proc.stderr
    assert not (workspace / "data" / "prepared").exists()
