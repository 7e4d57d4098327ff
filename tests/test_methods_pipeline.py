"""Every method trains through the real distill_student stage, and the comparison runs under DVC."""

import json
import runpy

import pytest

from conftest import make_workspace, run, write_params
from kdpipe.methods import METHODS


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny workspace with prepared data, teacher and assistant (DVC-tracked)."""
    ws = make_workspace(tmp_path_factory.mktemp("methods") / "ws")
    run(["dvc", "repro", "train_assistant"], ws)
    return ws


def run_stage_script(ws, script, monkeypatch):
    """Run a stage's entry point in this process (as `python src/<stage>.py` does, minus start-up)."""
    monkeypatch.chdir(ws)
    runpy.run_path(str(ws / "src" / script), run_name="__main__")


@pytest.mark.integration
@pytest.mark.parametrize("method", sorted(METHODS))
def test_method_runs_through_distill_student(trained, method, monkeypatch):
    write_params(trained, **{"distill.method": method, "student.epochs": 1})
    run_stage_script(trained, "distill_student.py", monkeypatch)
    summary = json.loads((trained / "metrics/train_student.json").read_text())
    assert summary["method"] == method and summary["epochs"] == 1
    assert (summary["teacher"] is None) == (not METHODS[method].needs_teacher)
    if method in {"fitnets", "feature_mse", "dml", "byot"}:
        assert summary["extra_params"] > 0
    assert (trained / "models/student.pt").is_file()


@pytest.mark.integration
def test_assistant_link_uses_its_own_method(trained, monkeypatch):
    write_params(trained, **{"assistant.distill.method": "at", "assistant.epochs": 1})
    run_stage_script(trained, "train_assistant.py", monkeypatch)
    summary = json.loads((trained / "metrics/train_assistant.json").read_text())
    assert summary["method"] == "at" and summary["teacher"] == "teacher"


@pytest.mark.integration
def test_comparison_under_dvc(trained):
    write_params(trained, **{"compare.methods": ["none", "kd"], "compare.seeds": [1, 2], "student.epochs": 1})
    run(["dvc", "repro", "train_assistant"], trained)  # back to the committed teacher/assistant
    run(["dvc", "repro", "compare/dvc.yaml"], trained)
    table = json.loads((trained / "metrics/methods.json").read_text())
    assert list(table) == ["none", "kd"]
    for row in table.values():
        assert 0 <= row["test_accuracy_best_val"] <= 1 and 0 <= row["test_accuracy_last"] <= 1
        assert row["runs"] == 2 and "test_accuracy_best_val_std" in row and row["epochs"] == 1
    assert table["none"]["teacher"] is None and table["kd"]["teacher"] == "resnet18"  # the tiny assistant
    assert table["kd"]["method"] == "kd" and table["kd"]["seeds"] == [1, 2]
    assert (trained / "plots/methods/methods.csv").read_text().startswith("method,")
    assert sorted(p.name for p in (trained / "metrics/compare").glob("*.json")) == [
        "kd-1.json", "kd-2.json", "none-1.json", "none-2.json"]
    # one cached stage per cell: a method's edit re-runs its cells (and the table), no other
    with open(trained / "src/kdpipe/methods/kd.py", "a") as fh:
        fh.write("# an edit\n")
    changed = set(json.loads(run(["dvc", "status", "compare/dvc.yaml", "--json"], trained).stdout))
    assert changed == {"compare/dvc.yaml:compare_cell@kd-1", "compare/dvc.yaml:compare_cell@kd-2"}, changed


TOY_METHOD = '''"""``toy``: cross-entropy plus a pull towards the teacher's logits (a test's one-file method)."""

import torch.nn.functional as F

from kdpipe.methods.common.base import Method, register_method


@register_method("toy")
class Toy(Method):
    logits_only = True

    def forward(self, batch):
        logits = self.student(batch.images)
        ce = self.cross_entropy(logits, batch.labels)
        pull = F.mse_loss(logits.float(), self.teacher.logits(batch).float())
        return logits, ce + 0.1 * pull, {"ce": ce.detach(), "pull": pull.detach()}
'''


@pytest.mark.integration
def test_a_new_method_is_one_new_file(trained):
    """Registered by its file name, validated, trained through the real stage: nothing else edited."""
    (trained / "src/kdpipe/methods/toy.py").write_text(TOY_METHOD)
    write_params(trained, **{"distill.method": "toy", "student.epochs": 1})
    run(["python", "src/distill_student.py"], trained)
    summary = json.loads((trained / "metrics/train_student.json").read_text())
    assert summary["method"] == "toy" and summary["teacher"] == "assistant"
    assert "toy" in run(["python", "-c", "from kdpipe.methods import METHODS; print(list(METHODS))"],
                        trained / "src").stdout
