import pytest

from conftest import ROOT, load_default_params
from kdpipe.config import load_params, parse_params
from kdpipe.errors import ConfigError
from kdpipe.methods import METHODS, check_link
from kdpipe.methods.common.base import method_settings


def with_change(path: str, value):
    raw = load_default_params()
    node = raw
    *head, last = path.split(".")
    for key in head:
        node = node[key]
    node[last] = value
    return raw


def error_of(raw) -> str:
    with pytest.raises(ConfigError) as info:
        parse_params(raw)
    return str(info.value)


def test_committed_params_are_valid():
    p = load_params(ROOT / "params.yaml")
    assert p.teacher.arch == "resnet50" and p.assistant.arch == "resnet34" and p.student.arch == "resnet18"
    assert p.distill.method == "kd" and p.assistant.distill.method == "kd"
    assert p.data.dataset == "digits"


def test_typo_in_key_suggests_the_right_one():
    raw = load_default_params()
    raw["distill"]["temprature"] = raw["distill"].pop("temperature")
    msg = error_of(raw)
    assert "distill.temprature" in msg and "did you mean 'temperature'" in msg


def test_typo_in_nested_section_key():
    raw = load_default_params()
    raw["train"]["augment"]["crop_pading"] = 2
    msg = error_of(raw)
    assert "train.augment.crop_pading" in msg and "crop_padding" in msg


def test_unknown_top_level_key():
    raw = load_default_params()
    raw["studnet"] = {}
    assert "did you mean 'student'" in error_of(raw)


@pytest.mark.parametrize(
    "path,value,expected",
    [
        ("teacher.epochs", -1, "teacher.epochs"),
        ("distill.temperature", 0, "distill.temperature"),
        ("distill.alpha", 1.5, "distill.alpha"),
        ("train.batch_size", "big", "train.batch_size"),
        ("train.device", "tpu", "train.device"),
        ("student.optimizer", "lamb", "student.optimizer"),
    ],
)
def test_bad_values_name_the_key_and_value(path, value, expected):
    msg = error_of(with_change(path, value))
    assert expected in msg and repr(value) in msg


def test_unknown_architecture_lists_choices_and_suggests():
    msg = error_of(with_change("student.arch", "resnet19"))
    assert "student.arch" in msg and "did you mean 'resnet18'" in msg and "mobilenet_v2" in msg


def test_unknown_method_and_dataset():
    assert "distill.method" in error_of(with_change("distill.method", "kdd"))
    assert "data.dataset" in error_of(with_change("data.dataset", "digitz"))


def test_per_method_sections_only_for_known_methods():
    raw = load_default_params()
    raw["distill"]["fitnetz"] = {"x": 1}
    assert "distill" in error_of(raw)


def test_assistant_link_is_independent_of_student_link():
    p = parse_params(with_change("distill.temperature", 2.0))
    assert p.distill.temperature == 2.0
    assert p.assistant.distill.temperature == load_default_params()["assistant"]["distill"]["temperature"]


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("seed: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_params(bad)


def test_unknown_dataset_lists_the_valid_names():
    msg = error_of(with_change("data.dataset", "cifar11"))
    assert "data.dataset" in msg and "did you mean 'cifar10'" in msg
    for name in ("digits", "cifar100", "mnist", "fashion_mnist", "medmnist", "imagefolder"):
        assert name in msg


def link_error(raw, where="distill"):
    params = parse_params(raw)  # the names are right: the file itself parses
    with pytest.raises(ConfigError) as err:
        check_link(params.links()[where], where)
    return str(err.value)


def test_method_sections_are_validated_by_the_method():
    raw = load_default_params()
    raw["distill"]["at"] = {"wieght": 3}
    assert "distill.at.wieght: unknown key (did you mean 'weight'?)" in link_error(raw)
    raw["distill"]["at"] = {"weight": -3}
    assert "distill.at.weight" in link_error(raw) and "-3" in link_error(raw)
    raw["assistant"]["distill"]["at"] = {"weight": 3, "p": 0}
    assert "assistant.distill.at.p" in link_error(raw, "assistant.distill")
    raw["distill"]["at"] = {"weight": 3}
    check_link(parse_params(raw).distill, "distill")  # valid: no error
    assert method_settings(METHODS["at"], parse_params(raw).distill, "distill").weight == 3


def test_cache_views_needs_a_logits_only_method():
    raw = load_default_params()
    raw["distill"].update(method="fitnets", cache_views=2)
    assert "distill.cache_views: method 'fitnets' reads the teacher's features" in link_error(raw)
    raw["distill"].update(method="dkd")
    check_link(parse_params(raw).distill, "distill")


def test_logit_standardize_only_for_logit_methods():
    raw = load_default_params()
    raw["distill"].update(method="fitnets", logit_standardize=True)
    msg = link_error(raw)
    assert "distill.logit_standardize: method 'fitnets' has no logit distillation term" in msg
    assert "kd, dkd, dist or ctkd" in msg
    raw["assistant"]["distill"].update(method="none", logit_standardize=True)
    assert "assistant.distill.logit_standardize: method 'none'" in link_error(raw, "assistant.distill")
    for method in ("kd", "dkd", "dist", "ctkd"):
        raw["distill"].update(method=method)
        check_link(parse_params(raw).distill, "distill")  # valid: no error
    raw["distill"]["logit_standardize"] = "maybe"
    assert "distill.logit_standardize" in error_of(raw)


def test_the_params_check_imports_only_the_registries_name_tables():
    """Validating params.yaml must not import a method's, model's or data source's code: every
    stage validates the whole file, and dvc.yaml can then list only the code a stage runs."""
    import json
    import os
    import subprocess
    import sys

    probe = (
        "import json, sys; from kdpipe.config import load_params; load_params('params.yaml'); "
        "print(json.dumps([sorted(m for m in sys.modules if m.startswith('kdpipe')), 'torch' in sys.modules]))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    loaded, torch_loaded = json.loads(out.stdout)
    assert loaded == ["kdpipe", "kdpipe.config", "kdpipe.data", "kdpipe.data.sources", "kdpipe.errors",
                      "kdpipe.methods", "kdpipe.models", "kdpipe.registry"]
    assert not torch_loaded


def test_suggestions_use_the_names_written_in_params_yaml():
    # the `validate` section is the `validation` field (alias): users must be told `validate`
    raw = load_default_params()
    raw["validat"] = raw.pop("validate")
    assert "did you mean 'validate'" in error_of(raw)
    raw = load_default_params()
    raw["validation"] = raw.pop("validate")
    assert "did you mean 'validate'" in error_of(raw)
