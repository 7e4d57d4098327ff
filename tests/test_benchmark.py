"""Benchmark matrices (kdpipe.benchmark): the pairs' params, the table over the seeds, its README
table; and one tiny benchmark run through DVC end to end."""

import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml

from conftest import ROOT, commit_all, make_workspace, tiny_params, tool_env
from kdpipe.benchmark import benchmark_table, cell_path, markdown_table, pair_params, teacher_metrics_path
from kdpipe.config import check_all, parse_params
from kdpipe.errors import ConfigError, MissingInputError
from kdpipe.io import write_json
from kdpipe.methods import METHODS, check_link, link_with
from kdpipe.methods.common.base import method_settings
from test_dvc_yaml import covers, traced_imports

PAIRS = {"r56_r20": {"teacher": "resnet56", "student": "resnet20"},
         "w_s": {"teacher": "wrn_40_2", "student": "shufflenet_v1", "teacher_lr": 0.02, "student_lr": 0.01}}


def bench_params(**benchmark):
    p = tiny_params()
    p["benchmark"] = {"pairs": PAIRS, "methods": ["none", "kd"], "seeds": [1, 2], **benchmark}
    p["distill"].update({m: {} for m in p["benchmark"]["methods"] if m in METHODS})
    return parse_params(p)


def test_a_pair_sets_the_architectures_and_the_student_learns_from_the_teacher():
    params = bench_params()
    pp = pair_params(params, "w_s")
    assert (pp.teacher.arch, pp.student.arch, pp.teacher.lr, pp.student.lr) == ("wrn_40_2", "shufflenet_v1", 0.02, 0.01)
    assert pp.distill.teacher == "teacher"
    assert pp.teacher.epochs == params.teacher.epochs and pp.student.epochs == params.student.epochs
    same = pair_params(params, "r56_r20")
    assert (same.teacher.lr, same.student.lr) == (params.teacher.lr, params.student.lr)
    with pytest.raises(ConfigError, match=r"benchmark.pairs: no pair 'r56' \(pairs: r56_r20, w_s\)"):
        pair_params(params, "r56")


@pytest.mark.parametrize("benchmark, message", [
    ({"pairs": {"a": {"teacher": "resnet65", "student": "resnet20"}}}, r"benchmark.pairs.a.teacher: unknown architecture 'resnet65' \(did you mean 'resnet56'\?\)"),
    ({"pairs": {"a-b": {"teacher": "resnet56", "student": "resnet20"}}}, r"pair name 'a-b': letters, digits and _ only"),
    ({"methods": ["kd", "dkdd"]}, r"benchmark.methods: unknown distillation method 'dkdd' \(did you mean 'dkd'\?\)"),
    ({"seeds": []}, r"benchmark.seeds"),
    ({"pairs": {"a": {"teacher": "resnet56", "student": "resnet20", "lr": 0.1}}}, r"benchmark.pairs.a.lr: unknown key"),
])
def test_bad_benchmark_sections_name_the_key(benchmark, message):
    with pytest.raises(ConfigError, match=message):
        bench_params(**benchmark)


def test_each_method_of_the_matrix_needs_its_distill_section():
    """Each cell depends on distill.<its method> (so editing one method's settings re-runs its cells
    only); DVC needs the key in params.yaml, so a missing one is named before any stage runs."""
    p = tiny_params()
    p["benchmark"] = {"pairs": PAIRS, "methods": ["none", "kd", "dkd"], "seeds": [1]}
    p["distill"]["none"] = {}
    with pytest.raises(ConfigError, match=r"benchmark.methods: each method needs its section under distill.*'kd: \{\}', 'dkd: \{\}'"):
        parse_params(p)
    cells = yaml.safe_load((ROOT / "experiments" / "cifar10_cpu" / "dvc.yaml").read_text())["stages"]["cell"]["params"]
    assert "distill.${item.method}" in cells and "distill" not in cells


def per_pair_params(dkd: dict):
    p = tiny_params()
    p["benchmark"] = {"pairs": PAIRS, "methods": ["kd", "dkd"], "seeds": [1]}
    p["distill"].update({"kd": {}, "dkd": dkd})
    return parse_params(p)


def test_a_method_setting_per_pair_applies_to_that_pair_only():
    """mdistiller's DKD β is 2 for ResNet-56 -> ResNet-20 and 8 by default: distill.<method>.per_pair."""
    params = per_pair_params({"beta": 8.0, "warmup_epochs": 2, "per_pair": {"r56_r20": {"beta": 2.0}}})
    check_all(params)
    settings = {pair: method_settings(METHODS["dkd"], link_with(pair_params(params, pair).distill, "dkd"), "distill")
                for pair in PAIRS}
    assert (settings["r56_r20"].beta, settings["r56_r20"].warmup_epochs) == (2.0, 2)
    assert (settings["w_s"].beta, settings["w_s"].warmup_epochs) == (8.0, 2)
    assert pair_params(params, "w_s").distill.model_extra["kd"] == {}


@pytest.mark.parametrize("dkd, message", [
    ({"per_pair": {"r56_r2": {"beta": 2.0}}}, r"distill.dkd.per_pair.r56_r2: no such benchmark pair \(did you mean 'r56_r20'\?\)"),
    ({"per_pair": ["r56_r20"]}, r"distill.dkd.per_pair: a mapping <pair>"),
    ({"per_pair": {"r56_r20": 2.0}}, r"distill.dkd.per_pair.r56_r20: a mapping of the method's settings"),
    ({"per_pair": {"r56_r20": {"bta": 2.0}}}, r"distill.dkd.bta: unknown key \(did you mean 'beta'\?\) \(benchmark pair 'r56_r20'"),
])
def test_bad_per_pair_settings_name_the_key(dkd, message):
    with pytest.raises(ConfigError, match=message):
        check_all(per_pair_params(dkd))


def test_the_link_as_written_leaves_per_pair_settings_out():
    """The default and compare pipelines run params.distill itself: there, per_pair is not a method setting."""
    params = per_pair_params({"beta": 8.0, "per_pair": {"r56_r20": {"beta": 2.0}}})
    check_link(params.distill, "distill")
    assert method_settings(METHODS["dkd"], params.distill, "distill").beta == 8.0


def test_an_error_outside_per_pair_settings_names_no_pair():
    p = tiny_params()
    p["benchmark"] = {"pairs": PAIRS, "methods": ["kd", "dkd"], "seeds": [1]}
    p["distill"].update({"kd": {"bogus": 1}, "dkd": {"per_pair": {"r56_r20": {"beta": 2.0}}}})
    with pytest.raises(ConfigError, match=r"^distill.kd: method 'kd' takes no settings of its own$"):
        check_all(parse_params(p))


def test_per_pair_settings_need_a_benchmark():
    p = tiny_params()
    p["distill"]["dkd"] = {"per_pair": {"r56_r20": {"beta": 2.0}}}
    with pytest.raises(ConfigError, match=r"distill.dkd.per_pair: settings per benchmark pair, but benchmark.pairs names no pair"):
        parse_params(p)


def test_one_distill_section_serves_logit_and_feature_methods():
    """The teacher cache (cache_views) is kept for logits-only methods; feature methods run their
    teacher live."""
    params = bench_params()
    distill = params.distill.model_copy(update={"cache_views": 2})
    assert (link_with(distill, "kd").method, link_with(distill, "kd").cache_views) == ("kd", 2)
    assert link_with(distill, "fitnets").cache_views == 0
    assert link_with(distill, "none").cache_views == 0


def fake_cell(pair, method, seed, best, last):
    write_json(cell_path(pair, method, seed), {
        "pair": pair, "method": method, "seed": seed, "test_accuracy_best_val": best, "test_accuracy_last": last,
        "train_seconds": 10.0 * seed, "extra_params": 7 if method == "kd" else 0,
        "teacher": None if method == "none" else PAIRS[pair]["teacher"]})


def test_the_table_averages_the_seeds_of_every_pair_and_method(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = bench_params()
    for i, pair in enumerate(PAIRS):
        write_json(teacher_metrics_path(pair), {"test_accuracy_best_val": 0.9 + i / 100})
        for method in ("none", "kd"):
            fake_cell(pair, method, 1, 0.80, 0.79)
            fake_cell(pair, method, 2, 0.84 if method == "kd" else 0.80, 0.81)
    table = benchmark_table(params)
    assert list(table) == ["r56_r20/none", "r56_r20/kd", "w_s/none", "w_s/kd"]
    kd = table["w_s/kd"]
    assert (kd["teacher"], kd["student"], kd["method"], kd["seeds"]) == ("wrn_40_2", "shufflenet_v1", "kd", [1, 2])
    assert kd["test_accuracy_best_val"] == pytest.approx(0.82) and kd["test_accuracy_best_val_std"] == pytest.approx(0.028284, abs=1e-6)
    assert kd["test_accuracy_last"] == pytest.approx(0.80) and kd["teacher_test_accuracy"] == 0.91
    assert kd["train_seconds"] == 15.0 and kd["extra_params"] == 7 and kd["runs"] == 2
    assert table["r56_r20/none"]["teacher"] == "resnet56"  # the pair's teacher, which `none` does not use
    assert json.loads((tmp_path / "metrics/methods.json").read_text()) == table
    csv = (tmp_path / "plots/methods/methods.csv").read_text().splitlines()
    assert csv[0] == "row,pair,method,test_accuracy_best_val,test_accuracy_last,train_seconds"
    assert csv[4].startswith("w_s/kd,w_s,kd,0.82,0.8,")

    lines = markdown_table(table, {"w_s/kd": {"test_accuracy": 76.23}, "w_s/teacher": {"test_accuracy": 75.61}}).splitlines()
    assert lines[0].endswith("| published |") and lines[1].count("|") == lines[0].count("|")
    assert lines[5] == "| wrn_40_2 → shufflenet_v1 | kd | 91.00 (75.61) | 82.00 ± 2.83 | 80.00 ± 1.41 | 1, 2 | 15 | 7 | 76.23 |"
    assert lines[2].endswith("| — |")

    cell_path("w_s", "kd", 2).unlink()
    with pytest.raises(MissingInputError, match=r"metrics/cells/w_s-kd-2.json: the cell of pair w_s, method kd, seed 2"):
        benchmark_table(params)


def test_every_benchmark_experiment_runs_the_same_pipeline():
    """A benchmark experiment is its params.yaml: every one has the same dvc.yaml."""
    files = sorted(p for p in (ROOT / "experiments").glob("*/dvc.yaml") if "table" in yaml.safe_load(p.read_text())["stages"])
    assert len(files) >= 2, files
    assert len({p.read_text() for p in files}) == 1, files


RUNNING = re.compile(r"Running stage '([\w@.-]+)'")


@pytest.mark.integration
def test_a_tiny_benchmark_runs_caches_its_cells_and_reruns_only_a_changed_method(tmp_path):
    ws = make_workspace(tmp_path / "ws")
    bench = ws / "experiments" / "bench"
    (bench / "data" / "raw").mkdir(parents=True)
    shutil.copy(ROOT / "experiments" / "s4_tutorial" / "dvc.yaml", bench / "dvc.yaml")
    p = tiny_params(**{"data.max_train_samples": 200, "teacher.epochs": 1, "student.epochs": 1, "distill.teacher": "teacher"})
    p["data"]["root"] = "data/raw"
    p["benchmark"] = {"pairs": {"p": {"teacher": "resnet20", "student": "resnet8"}}, "methods": ["none", "kd"], "seeds": [1, 2]}
    p["distill"].update({"logit_standardize": False, "none": {}, "kd": {}})
    (bench / "params.yaml").write_text(yaml.safe_dump(p, sort_keys=False))
    commit_all(ws, "benchmark")
    logs = []

    def repro(**env):
        out = subprocess.run(["dvc", "repro"], cwd=bench, env={**tool_env(), **env}, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)  # one stream: imports follow their stage
        assert out.returncode == 0, out.stdout
        logs.append(out.stdout)
        return RUNNING.findall(logs[-1])

    # PYTHONPROFILEIMPORTTIME: each stage's Python lists the kdpipe modules it imported
    assert set(repro(PYTHONPROFILEIMPORTTIME="1")) == {
        "prepare", "teacher@p", "cell@p-none-1", "cell@p-none-2", "cell@p-kd-1", "cell@p-kd-2", "table"}
    lock = yaml.safe_load((bench / "dvc.lock").read_text())["stages"]
    for stage, imported in traced_imports(logs[0]).items():
        deps = [d["path"].removeprefix("../../") for d in lock[stage]["deps"] if d["path"].startswith("../../src/")]
        missing = sorted(f for f in imported if not any(covers(d, f) for d in deps))
        assert not missing, f"stage {stage} imports {missing}, which dvc.yaml does not list"
        scripts = [d for d in deps if d.count("/") == 1]  # src/<stage>.py: run, not imported
        unused = sorted(d for d in deps if d not in scripts and not any(covers(d, f) for f in imported))
        assert not unused, f"dvc.yaml lists {unused} for stage {stage}, which it never imports"
    table = json.loads((bench / "metrics" / "methods.json").read_text())
    assert list(table) == ["p/none", "p/kd"]
    for row in table.values():
        assert (row["teacher"], row["student"], row["seeds"]) == ("resnet20", "resnet8", [1, 2])
        assert 0 < row["test_accuracy_best_val"] <= 1 and row["runs"] == 2
    assert repro() == []
    # benchmarks/loss_balance.py reads a run experiment: the pair's teacher, its data, its distill settings
    balance = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "loss_balance.py"), str(bench), "p", "kd",
                              "--batch", "16"], env=tool_env(), capture_output=True, text=True)
    assert balance.returncode == 0, balance.stdout + balance.stderr
    norms = re.search(r"\|grad ce\| (\S+) +\|grad \(loss - ce\)\| (\S+) +ratio (\S+)x", balance.stdout)
    assert norms and float(norms[1]) > 0 and float(norms[2]) > 0, balance.stdout
    commit_all(ws, "ran")
    kd = ws / "src" / "kdpipe" / "methods" / "kd.py"
    kd.write_text(kd.read_text() + "\n# edited\n")
    # the table re-runs only if a re-run cell's metrics file changed (its train seconds may not, at 0.1 s)
    assert sorted(set(repro()) - {"table"}) == ["cell@p-kd-1", "cell@p-kd-2"]
    again = json.loads((bench / "metrics" / "methods.json").read_text())  # same seeds, same accuracies
    assert [r["test_accuracy_best_val"] for r in again.values()] == [r["test_accuracy_best_val"] for r in table.values()]
