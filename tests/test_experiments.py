"""Experiment pipelines (experiments/<name>/) run the default pipeline's stage scripts in their own
folder: their stages must list the same code, params and outputs as the namesakes in dvc.yaml."""

import json
import subprocess

import pytest
import yaml

from conftest import ROOT, tool_env
from kdpipe.config import check_all, load_params

EXPERIMENTS = sorted(p.parent for p in (ROOT / "experiments").glob("*/dvc.yaml"))
DEFAULT = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
BENCHMARK_STAGES = {"teacher", "cell", "table"}  # a benchmark matrix's own (src/benchmark.py; tests/test_benchmark.py)
MODEL_CODE = "src/kdpipe/models/fastnet.py"  # the experiments' own architectures (the default uses ResNets)


def from_root(path: str) -> str:
    return path.removeprefix("../../")


@pytest.mark.parametrize("folder", EXPERIMENTS, ids=lambda p: p.name)
def test_stages_match_their_default_namesakes(folder):
    stages = yaml.safe_load((folder / "dvc.yaml").read_text())["stages"]
    assert stages, folder
    for name, spec in stages.items():
        if name in BENCHMARK_STAGES:
            continue
        default = DEFAULT[name]
        assert spec["cmd"] == default["cmd"].replace("python src/", "python ../../src/"), name
        deps = [from_root(d) for d in spec["deps"]]
        chain = "train_assistant" in stages  # without the assistant, nothing reads its model
        expected = [d for d in default["deps"] if chain or d != "models/assistant.pt"]
        extra = [d for d in deps if d not in expected]
        assert extra in ([], [MODEL_CODE]), (name, extra)
        assert [d for d in deps if d != MODEL_CODE] == expected, name
        for group in ("params", "outs", "metrics", "plots"):
            assert spec.get(group) == default.get(group), (name, group)


COMPARISONS = sorted(p.parent for p in (ROOT / "experiments").glob("*/compare/dvc.yaml"))
DEFAULT_COMPARE = yaml.safe_load((ROOT / "compare" / "dvc.yaml").read_text())["stages"]


@pytest.mark.parametrize("folder", COMPARISONS, ids=lambda p: p.parent.name)
def test_seed_and_method_cells_match_the_default_comparison(folder):
    """An experiment's comparison (experiments/<name>/compare/) runs the default comparison's cells
    in the experiment's folder: same command, code (plus the experiment's architectures), params
    and outputs."""
    spec = yaml.safe_load((folder / "dvc.yaml").read_text())
    assert "plots" not in spec  # (the plots page counts the top-level plots of experiments/*/dvc.yaml only)
    stages = spec["stages"]
    assert set(stages) == set(DEFAULT_COMPARE)
    for name, stage in stages.items():
        default = DEFAULT_COMPARE[name]
        assert stage["wdir"] == default["wdir"] == ".."
        assert stage["cmd"] == default["cmd"].replace("python src/", "python ../../src/"), name
        deps = [from_root(d) for d in stage["deps"]]
        assert [d for d in deps if d != MODEL_CODE] == default["deps"], name
        for group in ("matrix", "params", "outs", "metrics"):
            assert stage.get(group) == default.get(group), (name, group)


@pytest.mark.parametrize("folder", EXPERIMENTS, ids=lambda p: p.name)
def test_params_are_valid(folder):
    params = load_params(folder / "params.yaml")
    check_all(params)
    if "train_assistant" not in yaml.safe_load((folder / "dvc.yaml").read_text())["stages"]:
        assert params.distill.teacher == "teacher"  # no assistant stage: the student learns from the teacher


def test_cifar10_committed_results():
    """The contract: the committed dvc.lock records the whole chain; each training stage's summary
    has its training time, and the evaluation summary the default keys and the no-KD twin."""
    folder = ROOT / "experiments" / "cifar10"
    ran = set(yaml.safe_load((folder / "dvc.lock").read_text())["stages"])
    assert ran == set(yaml.safe_load((folder / "dvc.yaml").read_text())["stages"]), ran
    params = yaml.safe_load((folder / "params.yaml").read_text())
    for role, recipe in (("teacher", "teacher"), ("student", "student"), ("student_no_kd", "student")):
        train = json.loads((folder / "metrics" / f"train_{role}.json").read_text())
        assert train["train_seconds"] > 0 and train["arch"] == params[recipe]["arch"], role  # the committed params
    summary = json.loads((folder / "metrics" / "evaluate.json").read_text())
    assert {"teacher", "student", "student_no_kd", "student_onnx", "student_int8", "student_qat"} <= set(summary)


@pytest.mark.integration
def test_cifar10_committed_run_is_the_current_code():
    """No stage of the committed CIFAR-10 run is stale against the code and params in this commit:
    `dvc status` (DVC's own check) reports no modified dependency or params (in a clean checkout
    the data and models are absent, which it reports as deleted/missing, not modified)."""
    status = json.loads(subprocess.run(["dvc", "status", "--json", "experiments/cifar10/dvc.yaml"], cwd=ROOT,
                                       capture_output=True, text=True, check=True, env=tool_env()).stdout or "{}")
    stale = {stage: change for stage, changes in status.items() for change in changes if isinstance(change, dict)
             for kind, files in change.items() if kind in ("changed deps", "changed params", "changed command")
             and any(state == "modified" or kind != "changed deps" for state in files.values())}
    assert not stale, stale
