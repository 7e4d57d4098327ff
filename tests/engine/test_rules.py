import pytest
import torch

from kdpipe.config import TrainConfig
from kdpipe.engine import rules, runtime
from kdpipe.engine.rules import EngineChoice, family, general_default, load_rules, measured_choice
from kdpipe.engine.runtime import setup_runtime
from kdpipe.models import ARCHITECTURES, MODEL_FILE_ARCHS

RULES = {"cpus": {"avx512_bf16": {"families": {"cifar_resnet": {"choice": {
    "precision": "fp32", "channels_last": False, "small_conv_gemm": False}}}}}}


@pytest.fixture
def on_cpu_type(monkeypatch):
    """Pretend to run on an AVX-512 bf16 CPU whose measured rule is RULES."""
    monkeypatch.setattr(rules, "load_rules", lambda path=None: RULES)
    monkeypatch.setattr(runtime, "cpu_isa", lambda: "avx512_bf16")
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: True)


def test_families_group_architectures_by_their_code():
    assert family("resnet20") == family("resnet56") == "cifar_resnet"
    assert family("resnet18") == family("resnet50") == "torchvision_resnet"
    assert family("vgg11_bn") == family("vgg16_bn") == "torchvision_vgg"
    assert family("vgg8") == "cifar_vgg"
    assert family("mobilenet_v2") == "torchvision_mobilenet"
    assert family("fastnet_s") == family("airbench94") == "fastnet"
    assert family("timm:resnet10t") == "timm"


def test_a_measured_family_gets_its_rule_where_settings_are_auto(on_cpu_type):
    cfg = TrainConfig(device="cpu", precision="auto", channels_last="auto", small_conv_gemm="auto")
    rt = setup_runtime(cfg, seed=0, arch="resnet56")
    assert (rt.precision, rt.channels_last, rt.small_conv_gemm) == ("fp32", False, False)
    assert rt.rule_source == "avx512_bf16/cifar_resnet" and "measured rule avx512_bf16/cifar_resnet" in rt.describe()


def test_explicit_settings_win_over_the_rule(on_cpu_type):
    cfg = TrainConfig(device="cpu", precision="bf16", channels_last=True, small_conv_gemm=True)
    rt = setup_runtime(cfg, seed=0, arch="resnet20")
    assert (rt.precision, rt.channels_last, rt.small_conv_gemm, rt.rule_source) == ("bf16", True, True, "")
    mixed = TrainConfig(device="cpu", precision="bf16", channels_last="auto", small_conv_gemm=True)
    rt = setup_runtime(mixed, seed=0, arch="resnet20")
    assert (rt.precision, rt.channels_last, rt.small_conv_gemm, rt.rule_source) == ("bf16", False, True,
                                                                                    "avx512_bf16/cifar_resnet")


def test_a_live_teacher_keeps_the_rule_only_where_its_family_agrees(on_cpu_type):
    """The teacher runs under the step's precision and layout, so those follow the student's rule
    only where the teacher's family was measured to want the same; the GEMM is the student's."""
    cfg = TrainConfig(device="cpu")
    same = setup_runtime(cfg, seed=0, arch="resnet20", teacher_arch="resnet56")
    assert (same.precision, same.channels_last, same.small_conv_gemm) == ("fp32", False, False)
    other = setup_runtime(cfg, seed=0, arch="resnet20", teacher_arch="resnet50")  # no rule for its family
    assert (other.precision, other.channels_last, other.small_conv_gemm) == ("bf16", True, False)
    assert other.rule_source == "avx512_bf16/cifar_resnet, teacher torchvision_resnet"


def test_families_and_cpu_types_not_measured_get_the_general_defaults(on_cpu_type):
    cfg = TrainConfig(device="cpu")
    for arch in ("fastnet_s", None):  # not in RULES; no architecture (e.g. a benchmark's own loop)
        rt = setup_runtime(cfg, seed=0, arch=arch)
        assert (rt.precision, rt.channels_last, rt.small_conv_gemm, rt.rule_source) == ("bf16", True, True, "")
    assert measured_choice("avx2", "resnet20", RULES) is None
    assert measured_choice("avx512_bf16", "resnet20", RULES) == EngineChoice("fp32", False, False)


def test_a_cpu_without_native_bf16_never_gets_bf16_from_auto(on_cpu_type, monkeypatch):
    monkeypatch.setattr(rules, "load_rules", lambda path=None: {"cpus": {"avx512_bf16": {"families": {
        "cifar_resnet": {"choice": {"precision": "bf16", "channels_last": True, "small_conv_gemm": True}}}}}})
    monkeypatch.setattr(runtime, "cpu_has_fast_bf16", lambda: False)
    assert setup_runtime(TrainConfig(device="cpu"), seed=0, arch="resnet20").precision == "fp32"


def test_the_committed_rule_is_consistent_with_its_own_figures():
    """Every recorded choice names a registered family and valid settings; it is the default
    (bf16 where measured, NHWC, GEMM) when the default is within the recorded margin of the fastest
    combination, and otherwise itself within that margin of the fastest."""
    known = {family(a) for a in ARCHITECTURES if a not in MODEL_FILE_ARCHS}
    committed = load_rules()
    assert committed["cpus"], "src/kdpipe/engine/rules.json holds no CPU type"
    for cpu, entry in committed["cpus"].items():
        for fam, measured in entry["families"].items():
            assert fam in known, (cpu, fam)
            choice = EngineChoice(**measured["choice"])
            speeds, margin = measured["images_per_second"], measured["measured"]["margin"]
            default = general_default("bf16 NHWC gemm" in speeds).label
            best = max(speeds.values())
            if (1 + margin) * speeds[default] >= best:
                assert choice.label == default, (cpu, fam)
            else:
                assert (1 + margin) * speeds[choice.label] >= best, (cpu, fam)


def test_training_uses_the_resolved_memory_format_and_gemm(on_cpu_type, monkeypatch):
    from kdpipe.config import RoleConfig
    from kdpipe.data.prepared import PreparedData, PreparedMeta, Split
    from kdpipe.engine import trainer
    from kdpipe.engine.trainer import fit
    from kdpipe.methods import build_method
    from kdpipe.models.registry import build_model

    split = Split(torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8), torch.arange(64) % 2)
    data = PreparedData(PreparedMeta("toy", ["a", "b"], 3, 8, 8, [0.5] * 3, [0.25] * 3, {"train": 64, "val": 64}),
                        {"train": split, "val": split})
    seen, gemm = [], []
    model = build_model("resnet20", 2, 3, 8)
    model.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
    real = trainer.small_convs_as_gemm
    monkeypatch.setattr(trainer, "small_convs_as_gemm", lambda modules, on: gemm.append(on) or real(modules, on))
    cfg = TrainConfig(batch_size=32, device="cpu")
    fit(build_method("none", model), RoleConfig(arch="resnet20", epochs=1, lr=0.05), cfg, data,
        setup_runtime(cfg, seed=0, arch="resnet20"), seed=0)
    assert seen and not any(seen) and gemm == [False]  # the rule above: NCHW and no GEMM for cifar_resnet
