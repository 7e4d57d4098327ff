"""One ResNet-50 -> ResNet-18 KD training step on random 32x32 images, variants interleaved in one
process (so the machine's drift hits all of them alike): teacher chunk sizes, PyTorch's
deterministic NaN-filling of new tensors on and off (the flag is read at every allocation), and
the engine's CPU path for 3x3 convolutions on 4x4 maps (``kdpipe.engine.small_conv``) on and off.

    python benchmarks/kd_step.py                       # compiled; chunk 32, fill off; small-conv GEMM on and off
    python benchmarks/kd_step.py --eager --chunks 128,32 --fill both --gemm on
    python benchmarks/kd_step.py --teacher-only        # the teacher's forward alone: eager bf16 vs frozen compiled

Prints images/s per variant: the median over ``--rounds`` rounds of two steps each, and every round.
"""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from interleave import images_per_second, interleaved

from kdpipe.config import DistillConfig
from kdpipe.engine.compile import FrozenTeacher, compiled
from kdpipe.engine.small_conv import small_convs_as_gemm
from kdpipe.methods import Batch, build_method
from kdpipe.models.registry import build_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", default="32", help="teacher chunk sizes to compare")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--eager", action="store_true", help="no torch.compile")
    parser.add_argument("--teacher-only", action="store_true",
                        help="time the teacher's logits alone, eager and as train.compile freezes it, per chunk size")
    parser.add_argument("--fill", choices=["on", "off", "both"], default="off",
                        help="deterministic NaN-filling of new tensors (on: PyTorch's default; the engine: off)")
    parser.add_argument("--gemm", choices=["on", "off", "both"], default="both",
                        help="3x3 convs on 4x4 maps as im2col + GEMM (the engine on CPUs: on)")
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

    def step(chunk: int, fill: bool, gemm: bool) -> None:
        torch.utils.deterministic.fill_uninitialized_memory = fill
        method.teacher.chunk = chunk
        with small_convs_as_gemm(method.modules(), gemm):
            with torch.autocast("cpu", torch.bfloat16):
                loss = method(Batch(x, y))[1]
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    if args.teacher_only:
        return teacher_only(method, x, [int(c) for c in args.chunks.split(",")], args.rounds)

    choice = {"on": [True], "off": [False], "both": [True, False]}
    variants = [(int(c), f, g) for c in args.chunks.split(",") for f in choice[args.fill] for g in choice[args.gemm]]
    with compiled(method, not args.eager):
        seconds = interleaved({v: functools.partial(step, *v) for v in variants}, args.rounds, repeats=2)
    mode = "eager" if args.eager else "compiled"
    for (chunk, fill, gemm), times in seconds.items():
        print(f"{mode} KD step, teacher chunk {chunk:4d}, NaN-fill {'on ' if fill else 'off'}, "
              f"small-conv GEMM {'on ' if gemm else 'off'}: {images_per_second(args.batch, times)}")


def teacher_only(method, x: torch.Tensor, chunks: list[int], rounds: int) -> None:
    """The teacher's forward as a KD step runs it: eager under bf16 autocast, and frozen as
    ``train.compile`` compiles it (BatchNorm folded, weights prepacked), variants interleaved."""
    teacher = method.teacher
    runners = {"eager": teacher.network, "frozen": FrozenTeacher(teacher.network).eval()}
    variants = [(name, c) for name in runners for c in chunks]

    def forward(name: str, chunk: int) -> None:
        teacher.chunk = chunk
        with teacher.running(runners[name]), torch.autocast("cpu", torch.bfloat16):
            teacher.logits(Batch(x, None))

    seconds = interleaved({v: functools.partial(forward, *v) for v in variants}, rounds, repeats=2)
    for (name, chunk), times in seconds.items():
        print(f"teacher forward, {name:6s}, chunk {chunk:4d}: {images_per_second(len(x), times)}")


if __name__ == "__main__":
    main()
