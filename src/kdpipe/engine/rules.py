"""The engine's speed settings per architecture family and CPU type, from a committed measurement.

``train.precision``, ``train.channels_last`` and ``train.small_conv_gemm`` set to ``auto`` take the
choice ``benchmarks/engine_rule.py`` measured for the trained network's family on this kind of CPU
(``rules.json`` beside this file): never a timing probe at run time, whose answer would depend on
the machine's load and so change the numbers a run produces. A CPU type or family the file does
not hold gets the general defaults: bf16 where the CPU runs it natively, channels_last, and small
convolutions as GEMMs. Explicit values always win.

The rule was measured training one network alone (at 32 x 32, with the machine's threads). A live
teacher runs under the student's precision and memory format, so in distillation those two follow
the rule only where the teacher's family was measured to want the same; otherwise the defaults.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from kdpipe.models import ARCHITECTURES, TIMM_PREFIX

RULES_FILE = Path(__file__).with_name("rules.json")


@dataclass(frozen=True)
class EngineChoice:
    precision: str  # fp32 | bf16
    channels_last: bool
    small_conv_gemm: bool

    @property
    def label(self) -> str:
        """How benchmarks/engine_rule.py names the combination (and keys its figures)."""
        layout = "NHWC" if self.channels_last else "NCHW"
        return f"{self.precision} {layout} {'gemm' if self.small_conv_gemm else 'onednn'}"


def general_default(native_bf16: bool) -> EngineChoice:
    """What ``auto`` means where nothing was measured."""
    return EngineChoice("bf16" if native_bf16 else "fp32", True, True)


def family(arch: str) -> str:
    """The architecture family whose speed settings ``arch`` shares: the module that defines it,
    and for torchvision's models their kind (``torchvision_resnet``, ``_mobilenet``, ``_vgg``)."""
    if arch.startswith(TIMM_PREFIX):
        return "timm"
    module = ARCHITECTURES.get(arch, "unknown")
    if module == "registry":
        return "torchvision_" + arch.split("_")[0].rstrip("0123456789")
    return module


@cache
def load_rules(path: Path = RULES_FILE) -> dict:
    return json.loads(path.read_text()) if path.exists() else {"cpus": {}}


def measured_choice(cpu: str, arch: str, rules: dict | None = None) -> EngineChoice | None:
    """The committed choice for ``arch``'s family on a CPU of type ``cpu`` (``runtime.cpu_isa()``),
    or None where nothing was measured."""
    entry = (rules or load_rules())["cpus"].get(cpu, {}).get("families", {}).get(family(arch))
    return EngineChoice(**entry["choice"]) if entry else None


def resolve_choice(cpu: str, native_bf16: bool, arch: str | None,
                   teacher_arch: str | None = None) -> tuple[EngineChoice, str]:
    """The settings ``auto`` gives training ``arch`` (from ``teacher_arch``'s live outputs, if
    any) on a CPU of type ``cpu``, and where they come from: ``"<cpu>/<family>"`` of the rule,
    or ``""`` for the general defaults."""
    default = general_default(native_bf16)
    student = measured_choice(cpu, arch) if arch else None
    if student is None:
        return default, ""
    source = f"{cpu}/{family(arch)}"
    precision, channels_last = student.precision, student.channels_last
    if teacher_arch is not None:
        teacher = measured_choice(cpu, teacher_arch)
        source += f", teacher {family(teacher_arch)}"
        if teacher is None or teacher.precision != precision:
            precision = default.precision
        if teacher is None or teacher.channels_last != channels_last:
            channels_last = default.channels_last
    if precision == "bf16" and not native_bf16:  # a rule from another machine of the same type string
        precision = "fp32"
    return EngineChoice(precision, channels_last, student.small_conv_gemm), source
