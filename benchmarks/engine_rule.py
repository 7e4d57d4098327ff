"""Measure the engine's speed settings per architecture family on this CPU; write the rule.

    python benchmarks/engine_rule.py                    # print the table
    python benchmarks/engine_rule.py --write            # and record this CPU type's choices
    python benchmarks/engine_rule.py --recompute        # re-apply the choice to the recorded figures

For one network of every registered family (trained at 32 x 32, 10 classes, batch 128), the
engine's training loop (``fit``, cross-entropy, SGD) runs under every combination of precision
(fp32, and bf16 where the CPU runs it natively), memory format (channels_last or not) and small
convolutions as GEMMs (on or off). Images per second are the median of the timed epochs (the first
epoch is a warm-up) and of ``--rounds`` rounds, the combinations interleaved so that a drift of the
machine's speed hits all of them. A family keeps the general default (bf16 where native,
channels_last, small-conv GEMM) unless the fastest combination beats it by ``--margin``; then, of
the combinations within ``--margin`` of the fastest, the one that changes fewest settings (a
precision change counting double), so noise does not flip a setting. ``--write`` stores the
choices, every figure and the conditions for this CPU type (``cpu_isa()``) in ``src/kdpipe/engine/rules.json``, which ``train.*: auto`` reads at run time
(``kdpipe.engine.rules``); other CPU types' entries are kept. Each line ends with the combination's
speed against the default, as ``N.NNx``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import asdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch  # noqa: E402

from kdpipe.config import RoleConfig, TrainConfig  # noqa: E402
from kdpipe.data.prepared import PreparedData, PreparedMeta, Split  # noqa: E402
from kdpipe.engine.rules import RULES_FILE, EngineChoice, family, general_default  # noqa: E402
from kdpipe.engine.runtime import cpu_has_fast_bf16, cpu_isa, setup_runtime  # noqa: E402
from kdpipe.engine.trainer import fit  # noqa: E402
from kdpipe.methods import build_method  # noqa: E402
from kdpipe.models.registry import build_model  # noqa: E402

# one network per family: the one the project's experiments train, or the family's smallest
REPRESENTATIVES = {
    "fastnet": "fastnet_s",
    "cifar_resnet": "resnet20",
    "wrn": "wrn_16_2",
    "cifar_vgg": "vgg8",
    "shufflenet": "shufflenet_v2",
    "mobilenet_half": "mobilenet_v2_half",
    "tutorial_cnn": "lightnn",
    "torchvision_resnet": "resnet18",
    "torchvision_mobilenet": "mobilenet_v2",
    "torchvision_vgg": "vgg11_bn",
}


def combinations() -> list[EngineChoice]:
    precisions = ["bf16", "fp32"] if cpu_has_fast_bf16() else ["fp32"]
    return [EngineChoice(p, cl, g) for p, cl, g in itertools.product(precisions, (True, False), (True, False))]


def changes(choice: EngineChoice, default: EngineChoice) -> int:
    """How far ``choice`` departs from ``default``: a precision change (numerics) counts double."""
    return (2 * (choice.precision != default.precision) + (choice.channels_last != default.channels_last)
            + (choice.small_conv_gemm != default.small_conv_gemm))


def choose(speeds: dict[str, float], combos: list[EngineChoice], default: EngineChoice, margin: float) -> EngineChoice:
    """The default unless the fastest combination beats it by ``margin``; then, of the combinations
    within ``margin`` of the fastest, the one that changes least (so noise flips no setting)."""
    best = max(speeds[c.label] for c in combos)
    if best <= (1 + margin) * speeds[default.label]:
        return default
    near = [c for c in combos if (1 + margin) * speeds[c.label] >= best]
    return min(near, key=lambda c: (changes(c, default), -speeds[c.label]))


def synthetic_data(n_train: int, n_val: int, seed: int = 0) -> PreparedData:
    """Random 32 x 32 RGB images: the step's speed does not depend on the pixels."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_val
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    labels = torch.randint(0, 10, (n,), generator=g)
    meta = PreparedMeta("synthetic", [str(i) for i in range(10)], 3, 32, 32, [0.5] * 3, [0.25] * 3,
                        {"train": n_train, "val": n_val})
    return PreparedData(meta, {"train": Split(images[:n_train], labels[:n_train]),
                               "val": Split(images[n_train:], labels[n_train:])})


def images_per_second(arch: str, combo: EngineChoice, data: PreparedData, batch: int, epochs: int) -> float:
    cfg = TrainConfig(batch_size=batch, device="cpu", precision=combo.precision, channels_last=combo.channels_last,
                      small_conv_gemm=combo.small_conv_gemm)
    runtime = setup_runtime(cfg, seed=0, arch=arch)
    role = RoleConfig(arch=arch, epochs=epochs, optimizer="sgd", lr=0.05, weight_decay=5e-4, scheduler="none")
    method = build_method("none", build_model(arch, 10, 3, 32), None, None)
    result = fit(method, role, cfg, data, runtime, seed=0, desc=arch)
    return len(data["train"]) / statistics.median(h["epoch_seconds"] for h in result.history[1:])


def write_rules(cpu: str, families: dict, path: Path = RULES_FILE) -> None:
    """Record ``families`` (each with its own ``measured`` conditions) for CPU type ``cpu``; other
    families and CPU types already in the file are kept."""
    rules = json.loads(path.read_text()) if path.exists() else {}
    rules.setdefault("about", "Per family and CPU type: the engine's settings for train.*: auto. Written by "
                     "benchmarks/engine_rule.py --write; never edited by hand.")
    entry = rules.setdefault("cpus", {}).setdefault(cpu, {})
    entry["families"] = {**entry.get("families", {}), **families}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rules, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def report(fam: str, arch: str, speeds: dict[str, float], choice: EngineChoice, combos: list[EngineChoice],
           default: EngineChoice) -> None:
    base = speeds[default.label]
    print(f"\n{fam} ({arch})")
    for combo in combos:
        mark = " <- chosen" if combo == choice else ""
        print(f"  {combo.label:22} {speeds[combo.label]:9.1f} img/s{mark:11}   {speeds[combo.label] / base:.2f}x")


def recompute(margin: float | None) -> None:
    """Apply the current choice rule to the figures already in the file (no measuring)."""
    rules = json.loads(RULES_FILE.read_text())
    for cpu, entry in rules["cpus"].items():
        for fam, measured in entry["families"].items():
            speeds = measured["images_per_second"]
            combos = [c for c in (EngineChoice(p, cl, g) for p in ("bf16", "fp32") for cl in (True, False)
                                  for g in (True, False)) if c.label in speeds]
            default = general_default("bf16 NHWC gemm" in speeds)
            conditions = measured.setdefault("measured", dict(entry.get("measured", {})))  # (once per CPU type)
            if margin is not None:
                conditions["margin"] = margin
            choice = choose(speeds, combos, default, conditions["margin"])
            measured["choice"] = asdict(choice)
            report(f"{cpu} {fam}", measured["arch"], speeds, choice, combos, default)
        entry.pop("measured", None)
        write_rules(cpu, entry["families"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(REPRESENTATIVES), help="comma-separated families")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="training steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per measurement; the first is a warm-up")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--margin", type=float, default=None,
                        help="how much faster than the default a choice must be (default 0.05)")
    parser.add_argument("--write", action="store_true", help=f"record this CPU type's choices in {RULES_FILE.name}")
    parser.add_argument("--recompute", action="store_true",
                        help="re-apply the choice to the figures in the file, measuring nothing")
    args = parser.parse_args()
    if args.recompute:
        return recompute(args.margin)
    margin = 0.05 if args.margin is None else args.margin
    families = args.families.split(",")
    unknown = sorted(set(families) - set(REPRESENTATIVES))
    if unknown:
        parser.error(f"--families: unknown {', '.join(unknown)}; choose from {', '.join(REPRESENTATIVES)}")
    os.environ.setdefault("TQDM_DISABLE", "1")
    cpu, combos, default = cpu_isa(), combinations(), general_default(cpu_has_fast_bf16())
    data = synthetic_data(args.batch * args.steps, 128)
    conditions = {"date": time.strftime("%Y-%m-%d"), "cpu": _cpu_name(), "threads": torch.get_num_threads(),
                  "torch": torch.__version__, "batch": args.batch, "image": "3x32x32", "margin": margin,
                  "rounds": args.rounds, "steps": args.steps, "epochs": args.epochs}
    print(f"CPU type {cpu} ({conditions['cpu']}), {conditions['threads']} threads, torch {torch.__version__}, "
          f"batch {args.batch}, {args.steps} steps x {args.epochs - 1} timed epochs, {args.rounds} rounds")
    chosen = {}
    for fam in families:
        arch = REPRESENTATIVES[fam]
        assert family(arch) == fam, (arch, family(arch), fam)
        runs = {c.label: [] for c in combos}
        for _ in range(args.rounds):
            for combo in combos:
                runs[combo.label].append(images_per_second(arch, combo, data, args.batch, args.epochs))
        speeds = {k: round(statistics.median(v), 1) for k, v in runs.items()}
        choice = choose(speeds, combos, default, margin)
        report(fam, arch, speeds, choice, combos, default)
        chosen[fam] = {"arch": arch, "choice": asdict(choice), "images_per_second": speeds, "measured": conditions}
    if args.write:
        write_rules(cpu, chosen)
        print(f"\nwrote {RULES_FILE} ({cpu}: {', '.join(chosen)})")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    main()
