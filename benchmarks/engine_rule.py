"""Measure the engine's speed settings per architecture family on this CPU; write the rule.

    python benchmarks/engine_rule.py                    # print the table
    python benchmarks/engine_rule.py --write            # and record this CPU type's choices

For one network of every registered family (trained at 32 x 32, 10 classes, batch 128), the
engine's training loop (``fit``, cross-entropy, SGD) runs under every combination of precision
(fp32, and bf16 where the CPU runs it natively), memory format (channels_last or not) and small
convolutions as GEMMs (on or off). Images per second are the median of the timed epochs (the first
epoch is a warm-up) and of ``--rounds`` rounds, the combinations interleaved so that a drift of the
machine's speed hits all of them. A family keeps the general default (bf16 where native,
channels_last, small-conv GEMM) unless another combination is at least ``--margin`` faster, so
noise does not flip a choice. ``--write`` stores the choices and every figure for this CPU type
(``cpu_isa()``) in ``src/kdpipe/engine/rules.json``, which ``train.*: auto`` reads at run time
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch  # noqa: E402

from kdpipe.config import RoleConfig, TrainConfig  # noqa: E402
from kdpipe.data.prepared import PreparedData, PreparedMeta, Split  # noqa: E402
from kdpipe.engine.rules import RULES_FILE, family  # noqa: E402
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
def default_combo() -> dict:
    """What ``auto`` gives a family the rule does not hold (engine/runtime.py)."""
    return {"precision": "bf16" if cpu_has_fast_bf16() else "fp32", "channels_last": True, "small_conv_gemm": True}


def combinations() -> list[dict]:
    precisions = ["bf16", "fp32"] if cpu_has_fast_bf16() else ["fp32"]
    return [{"precision": p, "channels_last": cl, "small_conv_gemm": g}
            for p, cl, g in itertools.product(precisions, (True, False), (True, False))]


def label(combo: dict) -> str:
    return (f"{combo['precision']} {'NHWC' if combo['channels_last'] else 'NCHW'} "
            f"{'gemm' if combo['small_conv_gemm'] else 'onednn'}")


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


def images_per_second(arch: str, combo: dict, data: PreparedData, batch: int, epochs: int) -> float:
    cfg = TrainConfig(batch_size=batch, device="cpu", **combo)
    runtime = setup_runtime(cfg, seed=0, arch=arch)
    role = RoleConfig(arch=arch, epochs=epochs, optimizer="sgd", lr=0.05, weight_decay=5e-4, scheduler="none")
    method = build_method("none", build_model(arch, 10, 3, 32), None, None)
    result = fit(method, role, cfg, data, runtime, seed=0, desc=arch)
    return len(data["train"]) / statistics.median(h["epoch_seconds"] for h in result.history[1:])


def choose(speeds: dict[str, float], combos: list[dict], margin: float) -> dict:
    """The default combination unless another is at least ``margin`` faster."""
    default = default_combo()
    best = max(combos, key=lambda c: speeds[label(c)])
    return best if speeds[label(best)] >= (1 + margin) * speeds[label(default)] else default


def write_rules(cpu: str, entry: dict, path: Path = RULES_FILE) -> None:
    rules = json.loads(path.read_text()) if path.exists() else {}
    rules.setdefault("about", "Per family and CPU type: the engine's settings for train.*: auto. Written by "
                     "benchmarks/engine_rule.py --write; never edited by hand.")
    rules.setdefault("cpus", {})[cpu] = entry
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(rules, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--families", default=",".join(REPRESENTATIVES), help="comma-separated families")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=6, help="training steps per epoch")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per measurement; the first is a warm-up")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--margin", type=float, default=0.05, help="how much faster than the default a choice must be")
    parser.add_argument("--write", action="store_true", help=f"record this CPU type's choices in {RULES_FILE.name}")
    args = parser.parse_args()
    families = args.families.split(",")
    unknown = sorted(set(families) - set(REPRESENTATIVES))
    if unknown:
        parser.error(f"--families: unknown {', '.join(unknown)}; choose from {', '.join(REPRESENTATIVES)}")
    os.environ.setdefault("TQDM_DISABLE", "1")
    cpu, combos = cpu_isa(), combinations()
    data = synthetic_data(args.batch * args.steps, 128)
    print(f"CPU type {cpu} ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, batch {args.batch}, {args.steps} steps x {args.epochs - 1} timed epochs, "
          f"{args.rounds} rounds")
    chosen = {}
    for fam in families:
        arch = REPRESENTATIVES[fam]
        assert family(arch) == fam, (arch, family(arch), fam)
        runs = {label(c): [] for c in combos}
        start = time.perf_counter()
        for _ in range(args.rounds):
            for combo in combos:
                runs[label(combo)].append(images_per_second(arch, combo, data, args.batch, args.epochs))
        speeds = {k: statistics.median(v) for k, v in runs.items()}
        choice = choose(speeds, combos, args.margin)
        base = speeds[label(default_combo())]
        print(f"\n{fam} ({arch}), {time.perf_counter() - start:.0f} s")
        for combo in combos:
            mark = " <- chosen" if combo == choice else ""
            print(f"  {label(combo):22} {speeds[label(combo)]:9.1f} img/s{mark:11}   {speeds[label(combo)] / base:.2f}x")
        chosen[fam] = {"arch": arch, "choice": choice, "images_per_second": {k: round(v, 1) for k, v in speeds.items()}}
    if args.write:
        write_rules(cpu, {"measured": {"date": time.strftime("%Y-%m-%d"), "cpu": _cpu_name(), "threads":
                                       torch.get_num_threads(), "torch": torch.__version__, "batch": args.batch,
                                       "image": "3x32x32", "margin": args.margin, "rounds": args.rounds},
                          "families": {**_kept(cpu), **chosen}})
        print(f"\nwrote {RULES_FILE} ({cpu}: {', '.join(chosen)})")


def _kept(cpu: str) -> dict:
    """Families measured before on this CPU type and not re-measured now."""
    return json.loads(RULES_FILE.read_text())["cpus"].get(cpu, {}).get("families", {}) if RULES_FILE.exists() else {}


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            return next(line.split(":", 1)[1].strip() for line in fh if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor()


if __name__ == "__main__":
    main()
