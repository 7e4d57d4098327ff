"""One ResNet-50 -> ResNet-18 KD training step on random 32x32 images, variants interleaved in one
process (so the machine's drift hits all of them alike): teacher chunk sizes, and PyTorch's
deterministic NaN-filling of new tensors on and off (the flag is read at every allocation).

    python benchmarks/kd_step.py                       # compiled; chunks 128 (whole batch) and 32; fill on and off
    python benchmarks/kd_step.py --eager --chunks 128,64,32,16 --fill off

Prints images/s per variant: the median over ``--rounds`` rounds of two steps each, and every round.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from kdpipe.config import DistillConfig
from kdpipe.engine.compile import compiled
from kdpipe.methods import build_method
from kdpipe.models.registry import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", default="128,32", help="teacher chunk sizes to compare")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--eager", action="store_true", help="no torch.compile")
    parser.add_argument("--fill", choices=["on", "off", "both"], default="both",
                        help="deterministic NaN-filling of new tensors (on: PyTorch's default, the old engine)")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.use_deterministic_algorithms(True)
    cl = torch.channels_last
    student = build_model("resnet18", 10, 3, 32).to(memory_format=cl)
    teacher = build_model("resnet50", 10, 3, 32).to(memory_format=cl)
    # the engine's own pieces: the kd method (its chunked teacher_logits) and train.compile's compilation
    method = build_method("kd", student, teacher, DistillConfig(method="kd", temperature=4.0, alpha=0.9)).train()
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    x = torch.randn(args.batch, 3, 32, 32).to(memory_format=cl)
    y = torch.randint(0, 10, (args.batch,))

    def step(chunk: int, fill: bool) -> None:
        torch.utils.deterministic.fill_uninitialized_memory = fill
        method.teacher_chunk = chunk
        with torch.autocast("cpu", torch.bfloat16):
            loss = method(x, y)[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fills = {"on": [True], "off": [False], "both": [True, False]}[args.fill]
    variants = [(int(c), f) for c in args.chunks.split(",") for f in fills]
    seconds: dict[tuple[int, bool], list[float]] = {v: [] for v in variants}
    with compiled(method, not args.eager):
        for v in variants:  # warm-up (and compilation) outside the timing
            step(*v)
            step(*v)
        for _ in range(args.rounds):
            for v in variants:
                start = time.perf_counter()
                step(*v)
                step(*v)
                seconds[v].append((time.perf_counter() - start) / 2)
    mode = "eager" if args.eager else "compiled"
    for (chunk, fill), times in seconds.items():
        rounds = ", ".join(f"{args.batch / s:.0f}" for s in times)
        print(f"{mode} KD step, teacher chunk {chunk:4d}, NaN-fill {'on ' if fill else 'off'}: "
              f"{args.batch / statistics.median(times):6.1f} images/s   (rounds: {rounds})")


if __name__ == "__main__":
    main()
