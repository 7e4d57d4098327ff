"""The engine's speed settings per architecture family and CPU type, from a committed measurement.

``train.precision``, ``train.channels_last`` and ``train.small_conv_gemm`` set to ``auto`` take the
choice ``benchmarks/engine_rule.py`` measured for the trained network's family on this kind of CPU
(``rules.json`` beside this file): never a timing probe at run time, whose answer would depend on
the machine's load and so change the numbers a run produces. A CPU type or family the file does
not hold gets the general defaults: bf16 where the CPU runs it natively, channels_last, and small
convolutions as GEMMs. Explicit values always win.
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
