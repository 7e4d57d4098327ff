"""Training and inference images/s of registry architectures on this CPU (32x32 RGB, 10 classes):
the figures that size a benchmark experiment's budget (experiments/cifar10_cpu/README.md).

    PYTHONPATH=src python benchmarks/arch_throughput.py resnet20 resnet56 fastnet fastnet_s [--batch 256] [--threads 2]

One SGD step per batch after one warm-up step (fp32, channels-last), then eval-mode forward
passes; a plain loop, not the training engine (which adds its small-convolution GEMM path and
prefetching), so the engine's own figures run somewhat higher.
"""

import argparse
import time

import torch

from kdpipe.models.registry import build_model


def throughput(arch: str, batch: int, steps: int = 3) -> tuple[float, float]:
    model = build_model(arch, 10, 3, 32).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32).to(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    train = batch * steps / (time.perf_counter() - start)
    model.eval()
    with torch.inference_mode():
        model(x)
        start = time.perf_counter()
        for _ in range(steps):
            model(x)
        infer = batch * steps / (time.perf_counter() - start)
    return train, infer


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("archs", nargs="+")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for arch in args.archs:
        train, infer = throughput(arch, args.batch)
        print(f"{arch}: train {train:.0f} images/s, inference {infer:.0f} images/s "
              f"(batch {args.batch}, {args.threads} threads)", flush=True)
