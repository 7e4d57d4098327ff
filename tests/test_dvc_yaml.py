"""dvc.yaml lists, for each stage, exactly the project code the stage imports, so a code change
re-runs the stages it can affect and no other: the imports are traced from a real run."""

import ast
import json
import re
from pathlib import Path

import pytest
import yaml

from conftest import IMPORT_LOG, ROOT, run, write_params

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
IMPORT_LINE = re.compile(r"^import time:\s+\d+ \|\s+\d+ \|\s+(kdpipe(?:\.\w+)*)\s*$")
RUNNING = re.compile(r"Running stage '([\w@.-]+)'")


def module_file(name: str) -> str:
    """``kdpipe.methods.kd`` -> ``src/kdpipe/methods/kd.py`` (a package: its ``__init__.py``)."""
    base = Path("src", *name.split("."))
    return str(base / "__init__.py") if (ROOT / base).is_dir() else str(base.with_suffix(".py"))


def traced_imports(log: str) -> dict[str, set[str]]:
    """Per stage, the files of the kdpipe modules its process imported (PYTHONPROFILEIMPORTTIME)."""
    found: dict[str, set[str]] = {}
    stage = None
    for line in log.splitlines():
        if m := RUNNING.search(line):
            stage = m.group(1)
            found[stage] = set()
        elif (m := IMPORT_LINE.match(line)) and stage is not None:
            found[stage].add(module_file(m.group(1)))
    return found


def covers(dep: str, path: str) -> bool:
    return path == dep or path.startswith(dep.rstrip("/") + "/")


@pytest.fixture(scope="module")
def traced(reproduced_template):
    return traced_imports((reproduced_template.parent / IMPORT_LOG).read_text())


@pytest.fixture(scope="module")
def locked_deps(reproduced_template):
    """Each stage's code deps as DVC resolved them (templates such as ${distill.method} filled in)."""
    lock = yaml.safe_load((reproduced_template / "dvc.lock").read_text())["stages"]
    return {stage: [d["path"] for d in spec["deps"] if d["path"].startswith("src/")] for stage, spec in lock.items()}


@pytest.mark.integration
@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_deps_are_exactly_the_code_it_imports(stage, traced, locked_deps):
    assert stage in traced, f"no trace of stage {stage}"
    imported, deps = traced[stage], locked_deps[stage]
    script = STAGES[stage]["cmd"].split()[-1]
    assert script in deps
    missing = sorted(f for f in imported if not any(covers(d, f) for d in deps))
    assert not missing, f"stage {stage} imports {missing}, which dvc.yaml does not list"
    unused = sorted(d for d in deps if d != script and not any(covers(d, f) for f in imported))
    assert not unused, f"dvc.yaml lists {unused} for stage {stage}, which it never imports"


def test_a_method_file_imports_no_other_method():
    """What makes `methods/${method}.py` a complete dependency: a method reaches shared code only
    through methods/common, never another method's file."""
    methods_dir = ROOT / "src/kdpipe/methods"
    names = {p.stem for p in methods_dir.glob("*.py")} - {"__init__"}
    for path in sorted(methods_dir.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("kdpipe.methods."):
                other = node.module.split(".")[2]
                assert other == "common" or other not in names, f"{path.name} imports {node.module}"


def test_no_training_stage_has_a_persistent_output():
    """A `persist` output switches off DVC's run-cache for its stage."""
    for stage, spec in STAGES.items():
        for entry in spec.get("outs", []):
            opts = next(iter(entry.values())) if isinstance(entry, dict) else {}
            assert not (opts or {}).get("persist"), f"{stage}: {entry}"


def test_pipeline_order():
    assert list(STAGES) == ["prepare", "train_teacher", "train_assistant", "distill_student", "train_twin", "quantize",
                           "evaluate", "figures"]


def dvc_status(ws) -> dict:
    """The default pipeline's changed stages (the workspace's comparison was never run on its params)."""
    return json.loads(run(["dvc", "status", "dvc.yaml", "--json"], ws).stdout or "{}")


@pytest.mark.integration
def test_editing_a_method_file_reruns_only_the_links_that_use_it(reproduced):
    with open(reproduced / "src/kdpipe/methods/dkd.py", "a") as fh:  # a method the params do not use
        fh.write("# an edit\n")
    assert dvc_status(reproduced) == {}
    with open(reproduced / "src/kdpipe/methods/kd.py", "a") as fh:  # the method of both links (and of QAT)
        fh.write("# an edit\n")
    changed = set(dvc_status(reproduced))
    assert changed == {"train_assistant", "distill_student", "quantize"}, changed


@pytest.mark.integration
def test_an_experiment_run_before_comes_back_from_the_run_cache(reproduced):
    committed = (reproduced / "metrics/train_student.json").read_text()
    first = run(["dvc", "exp", "run", "-S", "distill.temperature=2"], reproduced)
    assert "Running stage 'distill_student'" in first.stdout, first.stdout
    # back to the committed value: every stage that trains, quantizes or measures comes back from
    # DVC's run-cache; only figures (a plain `cache: false` output: plots/evaluate, in git) draws again
    back = run(["dvc", "exp", "run", "-S", "distill.temperature=4.0"], reproduced)
    assert set(RUNNING.findall(back.stdout)) == {"figures"}, back.stdout
    for stage in ("distill_student", "quantize", "evaluate"):
        assert f"Stage '{stage}' is cached - skipping run, checking out outputs" in back.stdout, back.stdout
    assert (reproduced / "metrics/train_student.json").read_text() == committed


@pytest.mark.integration
def test_teacher_chunk_is_output_neutral_for_the_teacher_stage(reproduced, reproduced_template):
    """train.teacher_chunk is not a param of train_teacher (the teacher learns from labels alone):
    a run with another value writes the same model, byte for byte, and the same metrics."""
    write_params(reproduced, **{"train.teacher_chunk": 7})
    run(["python", "src/train_teacher.py"], reproduced)
    assert (reproduced / "models/teacher.pt").read_bytes() == (reproduced_template / "models/teacher.pt").read_bytes()
    timings = ("train_seconds", "images_per_second")
    new, old = (json.loads((ws / "metrics/train_teacher.json").read_text()) for ws in (reproduced, reproduced_template))
    assert {k: v for k, v in new.items() if k not in timings} == {k: v for k, v in old.items() if k not in timings}


@pytest.mark.integration
def test_the_distill_section_is_output_neutral_for_the_twin(reproduced, reproduced_template):
    """train_twin does not depend on `distill` (nor train.teacher_chunk): its run with method
    `none` reads neither, so other values write the same model, byte for byte."""
    write_params(reproduced, **{"distill.temperature": 2.0, "distill.alpha": 0.5, "train.teacher_chunk": 7})
    run(["python", "src/train_twin.py"], reproduced)
    twin = "models/student_no_kd.pt"
    assert (reproduced / twin).read_bytes() == (reproduced_template / twin).read_bytes()
    student = json.loads((reproduced_template / "metrics/train_student.json").read_text())
    new = json.loads((reproduced / "metrics/train_student_no_kd.json").read_text())
    assert new["method"] == "none" and new["teacher"] is None
    assert new["arch"] == student["arch"] and new["epochs"] == student["epochs"]


@pytest.mark.integration
def test_artifacts_come_out_of_the_model_registry(reproduced, tmp_path):
    """dvc.yaml's `artifacts:` names the deployable files: a version registered the GTO way (a git
    tag `<name>@v<semver>`) is fetched from a local clone with `dvc artifacts get`."""
    artifacts = yaml.safe_load((reproduced / "dvc.yaml").read_text())["artifacts"]
    assert {"teacher", "student", "student-onnx", "student-int8", "student-qat-int8"} <= set(artifacts)
    for name, spec in artifacts.items():
        assert spec["type"] == "model" and spec["desc"] and spec["labels"], name
        assert any(spec["path"] in (o if isinstance(o, str) else next(iter(o))) for s in STAGES.values()
                   for o in s.get("outs", [])), f"{name}: {spec['path']} is no stage's output"
    run(["git", "tag", "-a", "student-int8@v1.0.0", "-m", "Registering artifact student-int8 version v1.0.0"],
        reproduced)
    out = tmp_path / "student_int8.onnx"
    run(["dvc", "artifacts", "get", str(reproduced), "student-int8", "--rev", "v1.0.0", "-o", str(out)], tmp_path)
    assert out.read_bytes() == (reproduced / "models/student_int8.onnx").read_bytes()
