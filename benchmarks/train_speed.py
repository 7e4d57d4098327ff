"""Training and distillation throughput: this project's engine against a plain reference loop.

    python benchmarks/train_speed.py --data ../shared/datasets/cifar10-jpg.tar.gz   # or an unpacked tree

Both sides train the same registry models on the same real JPEGs (an ImageFolder tree with
train/<class>/ images) at the same batch size, side by side in one run, each in its own process
(so each peak memory is its own):

- reference, as the seed projects write it: torchvision ImageFolder, per-sample transforms
  (random crop with padding, flip, ToTensor, Normalize) in DataLoader workers, fp32, SGD, the
  teacher run live in fp32 in every distillation step;
- engine: kdpipe's trainer (``fit``) on decoded uint8 tensors, augmentation on whole batches,
  precision, memory format and small-conv GEMM at ``auto`` (the student's family's measured rule for
  this CPU type, ``src/kdpipe/engine/rules.json``; else bf16 where native, channels_last, GEMM),
  the teacher under no_grad and autocast; and the same with ``train.compile: true`` (compiled
  student step, teacher compiled for inference with frozen weights; compilation not timed), and
  with ``distill.cache_views: 1`` (teacher logits on a fixed augmented view computed once, before
  the timed epochs; the time it took is printed beside).

Images per second come from median times after a warm-up, as this machine's speed drifts: the
engine's median epoch (epochs 2 and 3 over the same ``--steps`` batches, each with a 256-image
validation), the reference's median step (2 x ``--steps`` steps after ``--warmup``). With
``--rounds R`` every side runs R times, the sides interleaved, and the median over rounds is
reported (with each round's figure). Printed: images/s for teacher training (cross-entropy) and
for distillation (KD), each process's peak memory, the achieved TFLOP/s (training: 3 x 2 x the
model's multiply-accumulates an image; KD adds the teacher's forward pass, 2 x its MACs) as a
share of this machine's GEMM peak at the run's precision (a 2048^3 matmul, measured first in the
same run), and last on each line the ratio against the reference, as ``N.NNx``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

# engine+compile: train.compile (teacher frozen); engine+cache: distill.cache_views 1 (KD only)
SIDES = ("reference", "engine", "engine+compile", "engine+cache")
MEAN, STD = [0.4914, 0.4822, 0.4465], [0.247, 0.243, 0.261]  # CIFAR-10's, for both sides


def find_tree(data: Path, workdir: Path) -> Path:
    if data.is_file() and data.name.endswith((".tar.gz", ".tgz", ".tar")):
        with tarfile.open(data) as tar:
            tar.extractall(workdir, filter="data")
        data = workdir
    for candidate in [data, *sorted(p for p in data.rglob("train") if p.is_dir())]:
        root = candidate if (candidate / "train").is_dir() else candidate.parent
        if (root / "train").is_dir():
            return root / "train"
    raise SystemExit(f"{data}: no train/<class>/ image folder found")


def gemm_peak_tflops(dtype_name: str, size: int = 2048, reps: int = 5) -> float:
    """Best of ``reps`` timed ``size``^3 matmuls, all threads (after one warm-up)."""
    import torch

    dtype = getattr(torch, dtype_name)
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e12


def train_flops_per_image(mode: str, teacher: str, student: str) -> float:
    """FLOPs of one training image: forward + backward (3 x 2 x MACs) of the trained model, plus
    the teacher's forward (2 x MACs) when distilling, at 32 x 32 and 10 classes."""
    from kdpipe.models.registry import build_model, count_macs

    macs = {a: count_macs(build_model(a, 10, 3, 32), (3, 32, 32)) for a in {teacher, student}}
    return 6 * macs[teacher] if mode == "teacher" else 6 * macs[student] + 2 * macs[teacher]


def peak_memory_mb() -> float:
    import torch

    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    if torch.cuda.is_available():
        return max(rss, torch.cuda.max_memory_allocated() / 2**20)
    return rss


def reference(args) -> dict:
    """The seeds' loop: PIL decoding and per-sample transforms in workers, fp32 everywhere."""
    import torch
    import torchvision.transforms as T
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    from kdpipe.methods.kd import kd_loss
    from kdpipe.models.registry import build_model

    torch.manual_seed(0)
    device = torch.device(args.device)
    tf = T.Compose([T.RandomCrop(32, padding=4), T.RandomHorizontalFlip(), T.ToTensor(), T.Normalize(MEAN, STD)])
    dataset = ImageFolder(args.tree, tf)
    loader = DataLoader(dataset, batch_size=args.batch, shuffle=True, num_workers=args.workers, drop_last=True,
                        persistent_workers=args.workers > 0, pin_memory=device.type == "cuda")
    n = len(dataset.classes)
    if args.mode == "distill":
        student = build_model(args.student, n, 3, 32).to(device)
        teacher = build_model(args.teacher, n, 3, 32).to(device).eval()
    else:
        student, teacher = build_model(args.teacher, n, 3, 32).to(device), None
    opt = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    student.train()
    times = []
    tick = time.perf_counter()
    for step, (x, y) in enumerate(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if teacher is not None:
            with torch.no_grad():
                t = teacher(x)
            loss = kd_loss(student(x), t, y, 4.0, 0.9)[0]
        else:
            loss = torch.nn.functional.cross_entropy(student(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        if step >= args.warmup:  # a step's time includes waiting for its batch from the workers
            times.append(now - tick)
        tick = now
        if step + 1 == args.warmup + args.steps * 2:
            break
    return {"images_per_second": args.batch / statistics.median(times), "precision": "fp32"}


def engine(args) -> dict:
    """kdpipe's fit(): two epochs over the same images, the second one timed."""
    import numpy as np
    import torch
    from torchvision.datasets.folder import find_classes, make_dataset

    from kdpipe.config import AugmentConfig, DistillConfig, RoleConfig, TrainConfig
    from kdpipe.data.prepared import PreparedData, PreparedMeta, Split
    from kdpipe.data.sources.decode import decode_files
    from kdpipe.engine.runtime import setup_runtime, teacher_chunk
    from kdpipe.engine.trainer import fit
    from kdpipe.methods import MethodContext, build_method
    from kdpipe.models.registry import build_model

    classes, index = find_classes(args.tree)
    samples = make_dataset(args.tree, index, extensions=(".jpg", ".jpeg", ".png"))
    picked = np.random.default_rng(0).permutation(len(samples))[: args.batch * args.steps + 256]
    decoded = decode_files([samples[i][0] for i in picked], 3, None)
    images = torch.from_numpy(np.stack([d.array for d in decoded]))
    labels = torch.tensor([samples[i][1] for i in picked])
    n_train = args.batch * args.steps
    meta = PreparedMeta("bench", classes, 3, 32, 32, MEAN, STD, {"train": n_train, "val": 256})
    data = PreparedData(meta, {"train": Split(images[:n_train], labels[:n_train]),
                               "val": Split(images[n_train:], labels[n_train:])})
    train_cfg = TrainConfig(batch_size=args.batch, device=args.device, precision="auto", channels_last="auto",
                            small_conv_gemm="auto", augment=AugmentConfig(crop_padding=4, hflip=True),
                            compile=args.side == "engine+compile", teacher_chunk=args.teacher_chunk)
    n = len(classes)
    arch = args.student if args.mode == "distill" else args.teacher
    live = args.mode == "distill" and args.side != "engine+cache"  # the cached side runs no teacher in the step
    # auto: the measured rule for this family (and a live teacher's: engine/rules.py)
    runtime = setup_runtime(train_cfg, seed=0, arch=arch, teacher_arch=args.teacher if live else None)
    role = RoleConfig(arch=arch, epochs=3, optimizer="sgd", lr=0.05, weight_decay=5e-4, scheduler="none")
    student = build_model(arch, n, 3, 32)
    if args.mode == "distill":
        teacher = build_model(args.teacher, n, 3, 32).eval()
        views = 1 if args.side == "engine+cache" else 0
        method = build_method("kd", student, teacher,
                              DistillConfig(method="kd", temperature=4.0, alpha=0.9, cache_views=views),
                              context=MethodContext(teacher_chunk=teacher_chunk(train_cfg, runtime.device)))
    else:
        method = build_method("none", student, None, None)
    result = fit(method, role, train_cfg, data, runtime, seed=0, desc="engine")
    epoch_seconds = statistics.median(h["epoch_seconds"] for h in result.history[1:])  # after a warm-up epoch
    return {"images_per_second": n_train / epoch_seconds, "precision": runtime.precision,
            "cache_seconds": result.teacher_cache_seconds, "settings": runtime.describe()}


def child(args) -> None:
    result = (reference if args.side == "reference" else engine)(args)
    print(json.dumps({**result, "peak_memory_mb": peak_memory_mb()}))


def measure(args, side: str, mode: str) -> dict:
    cmd = [sys.executable, __file__, "--child", side, "--mode", mode, "--tree", str(args.tree)]
    for key in ("batch", "steps", "warmup", "workers", "teacher", "student", "device", "teacher_chunk"):
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("../shared/datasets/cifar10-jpg.tar.gz"))
    parser.add_argument("--teacher", default="resnet50")
    parser.add_argument("--student", default="resnet18")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=8, help="steps per engine epoch (reference: 2x, timed)")
    parser.add_argument("--warmup", type=int, default=2, help="reference steps before timing")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="reference DataLoader workers")
    parser.add_argument("--device", default="cuda" if _cuda() else "cpu")
    parser.add_argument("--modes", default="teacher,distill")
    parser.add_argument("--rounds", type=int, default=1, help="run every side this many times, interleaved; report medians")
    parser.add_argument("--sides", default=",".join(SIDES), help="which sides to run (the ratio needs reference)")
    parser.add_argument("--teacher-chunk", type=int, default=0, help="engine: train.teacher_chunk (0 = auto)")
    parser.add_argument("--child", choices=SIDES, help=argparse.SUPPRESS)
    parser.add_argument("--mode", help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.side = args.child
        return child(args)
    unknown = sorted(set(args.sides.split(",")) - set(SIDES))
    if unknown:
        parser.error(f"--sides: unknown {', '.join(unknown)}; choose from {', '.join(SIDES)}")
    with tempfile.TemporaryDirectory() as tmp:
        args.tree = find_tree(args.data, Path(tmp))
        print(f"data {args.tree}  device {args.device}  batch {args.batch}  timed steps {args.steps}  "
              f"threads {os.cpu_count()}  teacher {args.teacher}  student {args.student}")
        peaks = {} if args.device != "cpu" else {p: gemm_peak_tflops(p) for p in ("float32", "bfloat16")}
        if peaks:
            print("GEMM peak (2048^3 matmul, all threads): " + ", ".join(f"{p} {t:.3f} TFLOP/s" for p, t in peaks.items()))
        print(f"{'run':40} {'images/s':>10} {'TFLOP/s':>8} {'of peak':>8} {'peak MB':>9} {'precision':>9}   vs ref")
        for mode in args.modes.split(","):
            label = f"{args.teacher} training" if mode == "teacher" else f"{args.teacher}->{args.student} KD"
            sides = [s for s in args.sides.split(",") if mode == "distill" or s != "engine+cache"]
            # rounds interleave the sides, so a drift of the machine's speed hits all of them
            runs = {side: [] for side in sides}
            for _ in range(args.rounds):
                for side in sides:
                    runs[side].append(measure(args, side, mode))
            rows = {side: summarise(r) for side, r in runs.items()}
            flops = train_flops_per_image(mode, args.teacher, args.student)
            for side, row in rows.items():
                ref = rows.get("reference")  # (without it, no ratio)
                ratio = f"{row['images_per_second'] / ref['images_per_second']:.2f}x" if ref else "—"
                notes = f"   (rounds: {', '.join(f'{v:.1f}' for v in row['rounds'])})" if args.rounds > 1 else ""
                if row.get("cache_seconds"):
                    notes += f"   (teacher cache built once in {row['cache_seconds']:.1f}s)"
                if row.get("settings"):
                    notes += f"   ({row['settings']})"
                tflops = row["images_per_second"] * flops / 1e12
                peak = peaks.get({"fp32": "float32", "bf16": "bfloat16"}.get(row["precision"], ""))
                share = f"{tflops / peak:8.0%}" if peak else f"{'—':>8}"
                print(f"{label + ' ' + side:40} {row['images_per_second']:10.1f} {tflops:8.3f} {share} "
                      f"{row['peak_memory_mb']:9.0f} {row['precision']:>9}{notes}   {ratio}")


def summarise(runs: list[dict]) -> dict:
    """Median images/s over the rounds, the largest peak memory."""
    speeds = [r["images_per_second"] for r in runs]
    return {**runs[0], "images_per_second": statistics.median(speeds), "rounds": speeds,
            "peak_memory_mb": max(r["peak_memory_mb"] for r in runs),
            "cache_seconds": statistics.median(r.get("cache_seconds") or 0.0 for r in runs)}


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


if __name__ == "__main__":
    main()
