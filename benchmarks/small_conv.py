"""A CIFAR ResNet's 3x3 convolutions, forward + backward, as oneDNN runs them and as the engine's
CPU path runs the tiny ones (``kdpipe.engine.small_conv``: im2col + one GEMM), side by side.

    python benchmarks/small_conv.py                  # batch 128, bf16 autocast, channels_last
    python benchmarks/small_conv.py --batch 32 --rounds 10

Every layer shape does the same arithmetic (channels double as the map halves), so oneDNN's
times should be alike; the rows show where they are not. Prints milliseconds per forward +
backward (median over rounds, the two ways interleaved) and their ratio.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from interleave import interleaved

from kdpipe.engine.small_conv import conv3x3_as_gemm, output_size

# (channels in, channels out, input size, stride): ResNet-18 on 32x32 images, small-input stem
LAYERS = [(64, 64, 32, 1), (128, 128, 16, 1), (256, 256, 8, 1), (256, 512, 8, 2), (512, 512, 4, 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    cl = torch.channels_last
    print(f"batch {args.batch}, bf16 autocast, channels_last, {torch.get_num_threads()} threads; ms per forward + backward")
    for cin, cout, size, stride in LAYERS:
        # as inside a bf16-autocast network: bf16 activations, fp32 weights (cast by autocast)
        x = torch.randn(args.batch, cin, size, size, dtype=torch.bfloat16).to(memory_format=cl).requires_grad_()
        w = torch.randn(cout, cin, 3, 3).mul_(0.05).to(memory_format=cl).requires_grad_()
        out_size = output_size(size, stride)
        grad = torch.randn(args.batch, cout, out_size, out_size, dtype=torch.bfloat16).to(memory_format=cl)
        ways = {
            "oneDNN": lambda x=x, w=w, s=stride: F.conv2d(x, w, stride=s, padding=1),
            "GEMM": lambda x=x, w=w, s=stride: conv3x3_as_gemm(x, w, (s, s)),
        }

        def run(conv, x=x, w=w, grad=grad) -> None:
            with torch.autocast("cpu", torch.bfloat16):
                out = conv()
            out.backward(grad)
            x.grad = w.grad = None

        seconds = interleaved({name: functools.partial(run, conv) for name, conv in ways.items()}, args.rounds)
        ms = {k: 1000 * statistics.median(v) for k, v in seconds.items()}
        print(f"{cin:4d}->{cout:4d} ch, {size:2d}x{size:<2d} -> {out_size}x{out_size}: oneDNN {ms['oneDNN']:6.1f}  "
              f"GEMM {ms['GEMM']:6.1f}  (GEMM {ms['oneDNN'] / ms['GEMM']:.2f}x)")


if __name__ == "__main__":
    main()
