"""dvc.yaml must list, for each stage, every project module the stage's script imports, so a
code change re-runs exactly the stages it can affect."""

import subprocess
import sys

import pytest
import yaml

from conftest import ROOT

STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
# stages of other pipeline files run from the root (wdir: ..), so their paths read the same
EXTRA = yaml.safe_load((ROOT / "compare" / "dvc.yaml").read_text())["stages"]

PROBE = """
import runpy, sys
sys.path.insert(0, "src")
runpy.run_path(sys.argv[1], run_name="not_main")
import kdpipe.config
kdpipe.config.load_params()  # every stage validates params.yaml, which imports the registries
for name, mod in sorted(sys.modules.items()):
    f = getattr(mod, "__file__", None) or ""
    if "/src/" in f:
        print(f.split("/src/", 1)[1])
"""


@pytest.mark.parametrize("stage", sorted(STAGES) + sorted(EXTRA))
def test_stage_deps_cover_imported_modules(stage):
    spec = STAGES.get(stage) or EXTRA[stage]
    script = spec["cmd"].split()[-1]
    out = subprocess.run(
        [sys.executable, "-c", PROBE, script], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    deps = [d for d in spec["deps"] if d.startswith("src/")]
    missing = [m for m in out if not any(f"src/{m}" == d or f"src/{m}".startswith(d.rstrip("/") + "/") for d in deps)]
    assert script in deps
    assert not missing, f"stage {stage} imports {missing} but dvc.yaml does not list them as deps"


def test_pipeline_order():
    assert list(STAGES) == ["prepare", "train_teacher", "train_assistant", "distill_student", "quantize", "evaluate"]
