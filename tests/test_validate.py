"""CI re-validation (kdpipe.validate): stale dvc.lock, accuracy regressions, Markdown report."""

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, commit_all, run, tool_env, write_params
from pydantic import ValidationError

from kdpipe import validate as v
from kdpipe.config import ValidateConfig

# --- `dvc status --json` as DVC 3.67.1 prints it (recorded on the tiny pipeline) ------------------

FRESH_CLONE = {  # committed and up to date, but no DVC-cached outputs: nothing is stale
    "prepare": [{"changed outs": {"data/prepared": "not in cache"}}],
    "train_teacher": [{"changed deps": {"data/prepared": "deleted"}}, {"changed outs": {"models/teacher.pt": "not in cache"}}],
    "evaluate": [{"changed deps": {"data/prepared": "deleted", "models/teacher.pt": "deleted"}}],
    "compare/dvc.yaml:compare_methods": [{"changed deps": {"data/prepared": "deleted", "models/teacher.pt": "deleted"}}],
}
PARAM_EDIT = {
    "distill_student": [{"changed deps": {"params.yaml": {"distill": "modified"}}}],
    "evaluate": [{"changed deps": {"params.yaml": {"train.eval_batch_size": "modified"}}}],
}
CODE_EDIT = {"prepare": [{"changed deps": {"src/kdpipe/io.py": "modified", "src/kdpipe/data": "modified"}}]}
CODE_DELETED = {"prepare": [{"changed deps": {"src/kdpipe/paths.py": "deleted"}}]}
COMMAND_EDIT = {"evaluate": ["changed command"]}
METRIC_EDITED = {"evaluate": [{"changed outs": {"metrics/evaluate.json": "modified"}}]}
NOT_IN_LOCK = {"distill_student": [{"changed deps": {"src/kdpipe/io.py": "modified", "params.yaml": "new"}}]}


def lock(deps=(), outs=(), params=None):
    return {"deps": [{"path": p, "md5": m} for p, m in deps], "outs": [{"path": p, "md5": m} for p, m in outs],
            "params": {"params.yaml": params or {}}}


LOCKS = {
    "prepare": lock([("src/kdpipe/io.py", "1")], [("data/prepared", "P.dir")], {"seed": 42}),
    "train_teacher": lock([("data/prepared", "P.dir")], [("models/teacher.pt", "T")], {"seed": 42}),
    "distill_student": lock([("data/prepared", "P.dir")], [("models/student.pt", "S")],
                            {"distill": {"temperature": 4.0, "alpha": 0.9}}),
    "evaluate": lock([("data/prepared", "P.dir"), ("models/teacher.pt", "T")], [("metrics/evaluate.json", "E")],
                     {"train.eval_batch_size": 512}),
    "compare/dvc.yaml:compare_methods": lock([("data/prepared", "P.dir"), ("models/teacher.pt", "T")]),
}
PARAMS = {"params.yaml": {"seed": 42, "distill": {"temperature": 3.0, "alpha": 0.9, "kd": {}},
                          "train": {"eval_batch_size": 256}}}


def test_fresh_clone_without_outputs_is_not_stale():
    assert v.stale_stages(FRESH_CLONE, LOCKS, PARAMS) == {}


def test_params_edit_names_stage_and_changed_keys():
    stale = v.stale_stages(PARAM_EDIT, LOCKS, PARAMS)
    assert stale == {
        "distill_student": ["params distill.kd (new: {}), distill.temperature (4.0 -> 3.0)"],
        "evaluate": ["params train.eval_batch_size (512 -> 256)"],
    }


def test_code_command_and_missing_lock_entries_are_stale():
    assert v.stale_stages(CODE_EDIT, LOCKS) == {"prepare": ["src/kdpipe/io.py modified", "src/kdpipe/data modified"]}
    assert v.stale_stages(CODE_DELETED, LOCKS) == {"prepare": ["src/kdpipe/paths.py deleted"]}
    assert v.stale_stages(COMMAND_EDIT, LOCKS) == {"evaluate": ["command changed"]}
    locks = {k: e for k, e in LOCKS.items() if k != "distill_student"}
    assert v.stale_stages(NOT_IN_LOCK, locks) == {"distill_student": ["not in dvc.lock (never reproduced)"]}


def test_edited_metrics_file_is_a_note_not_stale():
    assert v.stale_stages(METRIC_EDITED, LOCKS) == {}
    assert v.modified_outputs(METRIC_EDITED) == ["metrics/evaluate.json"]
    assert v.modified_outputs(FRESH_CLONE) == []


def test_dvc_lock_links_between_stages_are_checked():
    # train_teacher ran on older prepared data: `dvc status` in a clone only says "deleted".
    locks = {**LOCKS, "train_teacher": lock([("data/prepared", "OLD.dir")], [("models/teacher.pt", "T")])}
    stale = v.stale_stages(FRESH_CLONE, locks, PARAMS)
    assert stale == {"train_teacher": ["data/prepared (output of prepare) changed since it ran"]}


def test_load_locks_resolves_wdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "compare").mkdir()
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"prepare": {"cmd": "x"}}}))
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"prepare": {
        "cmd": "x", "outs": [{"path": "data/prepared", "md5": "P.dir"}]}}}))
    (tmp_path / "compare/dvc.yaml").write_text(yaml.safe_dump({"stages": {"cm": {"cmd": "y", "wdir": ".."}}}))
    (tmp_path / "compare/dvc.lock").write_text(yaml.safe_dump({"schema": "2.0", "stages": {"cm": {
        "cmd": "y", "deps": [{"path": "data/prepared", "md5": "P.dir"}], "params": {"params.yaml": {"seed": 1}}}}}))
    locks = v.load_locks(["dvc.yaml", "compare/dvc.yaml"])
    assert set(locks) == {"prepare", "compare/dvc.yaml:cm"}
    assert locks["compare/dvc.yaml:cm"]["deps"][0]["path"] == "data/prepared"
    assert locks["compare/dvc.yaml:cm"]["params"] == {"params.yaml": {"seed": 1}}
    assert v.inconsistent_links(locks) == {}


def test_metrics_files_are_every_json_output_and_summary_of_the_pipeline():
    files = v.metrics_files(ROOT / "dvc.yaml")
    names = {Path(f).name for f in files}
    # the summaries (stage `metrics:`) that `dvc exp show` reads, and the detail beside them (`outs:`)
    assert {"evaluate.json", "quantize.json", "train_teacher.json", "train_assistant.json",
            "train_student.json", "prepare.json", "evaluate_detail.json", "evaluate_splits.json"} <= names


def test_flatten_and_metric_kinds():
    assert v.flatten({"a": {"b": 1, "c": [2, {"d": 3}]}, "e": "x", "f": {}}) == {
        "a.b": 1, "a.c.0": 2, "a.c.1.d": 3, "e": "x", "f": {}}
    for key in ("teacher.accuracy", "test.student.top3_accuracy", "best_val_accuracy", "val_accuracy_int8"):
        assert v.is_accuracy(key), key
    for key in ("student.latency_ms", "train_seconds", "images_per_second", "student.throughput_b64",
                "student.speedup_vs_student", "seconds", "accuracy_time_s", "f1_macro", "macs", "params"):
        assert not v.is_accuracy(key), key
    assert v.accuracies({"m": {"accuracy": 0.9, "latency_ms": 3.0, "arch": "resnet18", "ok": True}}) == {"m.accuracy": 0.9}


def test_compare_tolerance_and_timings():
    committed = {"e.json": {"student": {"accuracy": 0.97, "top3_accuracy": 0.99, "latency_ms": 4.0},
                            "teacher": {"accuracy": 0.98}, "int8": {"accuracy": 0.96}, "old": {"accuracy": 0.5}}}
    new = {"e.json": {"student": {"accuracy": 0.96, "top3_accuracy": 0.99, "latency_ms": 40.0},  # 1 pt drop
                      "teacher": {"accuracy": 0.9772}, "int8": {"accuracy": 0.97}, "extra": {"accuracy": 0.1},
                      "qat": {"accuracy": 0.9628}}}
    committed["e.json"]["qat"] = {"accuracy": 0.96}
    rows = {r.key: r for r in v.compare(committed, new, tolerance=0.005)}
    assert {k: r.verdict for k, r in rows.items()} == {
        "student.accuracy": "REGRESSION",
        "student.top3_accuracy": "same",
        "teacher.accuracy": "worse (within tolerance)",  # 0.28 pt: one test image on the default data
        "int8.accuracy": "CHANGED",  # 1 pt better: the committed number is stale all the same
        "qat.accuracy": "better (within tolerance)",
        "old.accuracy": "MISSING",
        "extra.accuracy": "new",
    }
    assert [r.key for r in rows.values() if r.failed] == ["student.accuracy", "int8.accuracy", "old.accuracy"]
    assert v.compare(committed, new, tolerance=0.02)[0].verdict == "worse (within tolerance)"
    table = v.comparison_markdown(list(rows.values()), 0.005)
    assert "| e.json: student.accuracy | 0.97 | 0.96 | -0.01 | **REGRESSION** |" in table
    assert "latency" not in table
    assert "1 of 6 committed accuracies identical" in table and '1 more ("new") had no committed value' in table


def test_exactness_is_claimed_only_on_the_same_cpu_family_and_precision():
    amx = {"metrics/train_student.json": {"cpu_isa": "amx_bf16", "precision": "bf16"}}
    avx2 = {"metrics/train_student.json": {"cpu_isa": "avx2", "precision": "fp32"}}
    same = [v.Row("f", "a.accuracy", 0.9, 0.9, "same")]
    off = same + [v.Row("f", "b.accuracy", 0.9, 0.8972, "worse (within tolerance)")]
    assert "every accuracy is identical" in v.exactness_markdown(amx, amx, same)
    # a detail file a fresh clone does not hold has no committed value: not counted against exactness
    assert "every accuracy is identical" in v.exactness_markdown(amx, amx, same + [v.Row("d", "a.accuracy", None, 0.9, "new")])
    assert "**only 1 of 2 accuracies are identical**" in v.exactness_markdown(amx, amx, off)
    text = v.exactness_markdown(amx, avx2, off)
    assert "**Exact comparison is impossible**" in text and "cpu_isa amx_bf16, precision bf16" in text
    assert "cpu_isa avx2, precision fp32" in text and "identical" not in text
    assert "unrecorded" in v.exactness_markdown({}, avx2, same)


def test_another_cpu_family_or_precision_is_compared_within_the_cross_machine_tolerance():
    """The CI machine need not be the committer's: AVX2 fp32 vs AVX-512 bf16 moved the default
    pipeline's accuracies by up to 0.017; the same machine family keeps the strict tolerance."""
    avx2 = {"metrics/train_student.json": {"cpu_isa": "avx2", "precision": "fp32"}}
    bf16 = {"metrics/train_student.json": {"cpu_isa": "avx512_bf16", "precision": "bf16"}}
    config = ValidateConfig(tolerance=0.009, cross_machine_tolerance=0.03)
    assert v.tolerance_for(avx2, avx2, config) == 0.009
    assert v.tolerance_for(avx2, bf16, config) == 0.03
    assert v.tolerance_for({}, {}, config) == 0.03  # facts unrecorded: never assumed the same machine
    committed = {"e.json": {"student": {"accuracy": 0.961111}}, **avx2}
    rerun = {"e.json": {"student": {"accuracy": 0.977778}}, **bf16}
    [row] = v.compare(committed, rerun, v.tolerance_for(committed, rerun, config))
    assert row.verdict == "better (within tolerance)"
    [row] = v.compare(committed, {**rerun, **avx2}, v.tolerance_for(committed, {**rerun, **avx2}, config))
    assert row.verdict == "CHANGED"  # the same drift on the committer's machine family is a stale lock
    rerun["e.json"]["student"]["accuracy"] = 0.92
    assert v.compare(committed, rerun, 0.03)[0].verdict == "REGRESSION"
    with pytest.raises(ValidationError, match="cross_machine_tolerance"):
        ValidateConfig(tolerance=0.05, cross_machine_tolerance=0.03)


def test_never_reproduced_workspace_fails_fast(workspace, monkeypatch, capsys, tmp_path):
    """No dvc.lock at all: every default stage is reported, nothing runs."""
    monkeypatch.chdir(workspace)
    summary = tmp_path / "summary.md"
    assert v.main(["--summary", str(summary)]) == 1
    out = capsys.readouterr().out
    assert "**dvc.lock is stale**" in out and "`train_teacher`: not in dvc.lock (never reproduced)" in out
    assert "Fix: run `dvc repro`" in out
    assert summary.read_text() == out
    assert not list((workspace / "models").glob("*.pt"))  # nothing ran (models/imported/ is the users' folder)


# --- end to end on the tiny reproduced workspace -------------------------------------------------


def validate(ws: Path, *args: str, timeout: int = 1800) -> subprocess.CompletedProcess:
    env = {**tool_env(), "PYTHONPATH": "src"}
    env.pop("GITHUB_STEP_SUMMARY", None)
    return subprocess.run([sys.executable, "-m", "kdpipe.validate", *args], cwd=ws, env=env,
                          capture_output=True, text=True, timeout=timeout, check=False)


def without_comparison(ws: Path) -> Path:
    """The tiny workspace never ran the method comparison (validate would call it stale): drop it."""
    shutil.rmtree(ws / "compare")
    commit_all(ws, "no method comparison")
    return ws


@pytest.mark.integration
def test_params_edited_but_not_reproduced_fails_before_running(reproduced):
    ws = without_comparison(reproduced)
    write_params(ws, **{"distill.temperature": 3.0})
    commit_all(ws, "temperature 3 (not reproduced)")
    model_mtime = (ws / "models/student.pt").stat().st_mtime_ns
    start = time.monotonic()
    proc = validate(ws)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert time.monotonic() - start < 120
    assert "**dvc.lock is stale**" in proc.stdout
    assert "- `distill_student`: params distill.temperature (4.0 -> 3.0)" in proc.stdout
    assert "- `quantize`: params distill.temperature (4.0 -> 3.0)" in proc.stdout
    assert "train_teacher" not in proc.stdout  # its params and code did not change
    assert "Running stage" not in proc.stderr
    assert (ws / "models/student.pt").stat().st_mtime_ns == model_mtime
    assert run(["git", "status", "--porcelain"], ws).stdout == ""


@pytest.mark.integration
def test_rerun_catches_a_one_point_regression_and_nothing_else(reproduced, tmp_path):
    """One re-run serves two checks: the injected 1-point drop fails, naming the metric, and every
    other accuracy is recomputed exactly (so the untouched workspace passes)."""
    ws = without_comparison(reproduced)
    path = ws / "metrics/evaluate.json"
    metrics = json.loads(path.read_text())
    original = metrics["student"]["accuracy"]
    metrics["student"]["accuracy"] = round(original + 0.01, 6)
    path.write_text(json.dumps(metrics, indent=2))
    commit_all(ws, "committed student accuracy 1 point above what the code gives")
    summary = tmp_path / "summary.md"
    proc = validate(ws, "--base", "HEAD~1", "--summary", str(summary))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Running stage 'train_teacher'" in proc.stderr and "Running stage 'evaluate'" in proc.stderr
    failed = f"metrics/evaluate.json: student.accuracy REGRESSION: committed {original + 0.01:.6g}, re-run {original:.6g}"
    assert f"**Failed:**\n\n- {failed}\n" in proc.stdout
    assert "Note: outputs differ from dvc.lock: metrics/evaluate.json." in proc.stdout
    table = proc.stdout.split("### Accuracies")[1].split("###")[0]
    rows = [line for line in table.splitlines() if line.startswith("| metrics/")]
    verdicts = {line.split(" | ")[0][2:]: line.rstrip(" |").rsplit(" | ", 1)[1] for line in rows}
    assert len(verdicts) == len(rows) > 40  # every accuracy of every metrics file
    assert verdicts.pop("metrics/evaluate.json: student.accuracy") == "**REGRESSION**"
    assert set(verdicts.values()) == {"same"}, verdicts
    assert not any(v.is_timing(key) for key in verdicts)
    # Against the commit before the injection, the re-run's metrics differ in timings only.
    assert "### `dvc metrics diff HEAD~1`" in proc.stdout and "### `dvc params diff HEAD~1`" in proc.stdout
    metrics_diff = proc.stdout.split("### `dvc metrics diff HEAD~1`")[1].split("###")[0]
    changed = [line.split("|")[2].strip() for line in metrics_diff.splitlines() if line.startswith("| metrics/")]
    assert any(v.is_timing(key) for key in changed) and not any(v.is_accuracy(key) for key in changed), changed
    assert summary.read_text() == proc.stdout


@pytest.mark.integration
def test_up_to_date_workspace_passes_with_markdown_diffs(reproduced, tmp_path):
    """The tolerance is a param no stage reads: changing it is not stale, and shows in the diff."""
    ws = without_comparison(reproduced)
    write_params(ws, **{"validate.tolerance": 0.01})
    commit_all(ws, "looser tolerance")
    summary = tmp_path / "summary.md"
    summary.write_text("earlier step\n")
    proc = validate(ws, "--no-repro", "--base", "HEAD~1", "--summary", str(summary))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "dvc.lock is up to date with code and params (dvc.yaml)." in proc.stdout
    assert "### `dvc metrics diff HEAD~1`\n\n_No changes._" in proc.stdout
    row = r"^\| params.yaml +\| validate.tolerance +\| 0.009 +\| 0.01 +\|$"
    assert re.search(row, proc.stdout, re.MULTILINE), proc.stdout
    assert proc.stdout.rstrip().endswith("**Passed.**")
    assert summary.read_text() == "earlier step\n" + proc.stdout
