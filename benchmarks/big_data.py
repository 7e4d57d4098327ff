"""Data larger than memory: prepare and one training epoch from memory-mapped splits, against the
in-RAM path, with each phase's peak private memory.

    python benchmarks/big_data.py --images 100000 --size 96 [--source ../shared/datasets/cifar10-jpg.tar.gz]

1. Makes an ImageFolder tree of ``--images`` JPEGs of ``--size`` px (train/<class>/, plus a test
   split of ``--test-images``) by resizing the shipped CIFAR-10 JPEGs (bilinear; every repeat of a
   source image mirrored or shifted, so no two files are the same), in parallel.
2. Runs kdpipe's prepare on it (streaming: headers probed, pixels decoded in parallel into the
   .npy files a chunk at a time).
3. Trains ``--arch`` (default: the tutorial's LightNN) for one epoch with kdpipe's trainer twice,
   each in its own process: reading batches from the memory-mapped split (the default), and from
   an in-RAM copy of it (``load_prepared(..., in_memory=True)``, the former behaviour).

Each phase runs in a child process; this process samples the child's memory every 0.1 s.
**Peak private memory** is the largest sum over the child and its decoding workers of
``Pss_Anon`` (/proc/<pid>/smaps_rollup): anonymous memory, shared pages split between the
processes that share them, page cache never counted (a memory-mapped split's pages are cache).
Printed per phase: wall time, images/s and the peak, then the training throughput ratio.
Goal (issue 18): at 100,000 images of 96 px, both peaks <= 2.5 GB (2500 MB) and memory-mapped
training within 10% of the in-RAM throughput.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SOURCE = ROOT.parent / "shared" / "datasets" / "cifar10-jpg.tar.gz"
GOAL_MB = 2500
GOAL_SLOWDOWN = 0.10


# --- the tree ------------------------------------------------------------------------------------


def source_images(source: Path, workdir: Path) -> list[tuple[str, str]]:
    """(path, class) of every training JPEG of the CIFAR-10 tree (unpacked from the archive)."""
    if source.is_file():
        with tarfile.open(source) as tar:
            tar.extractall(workdir / "source", filter="data")
        source = workdir / "source"
    trains = sorted(p for p in source.rglob("train") if p.is_dir())
    if not trains:
        raise SystemExit(f"{source}: no train/<class>/ folder found")
    found = [(str(p), p.parent.name) for p in sorted(trains[0].glob("*/*")) if p.is_file()]
    random.Random(0).shuffle(found)  # so that any number of them covers every class
    return found


def _make(job: tuple[str, str, int, int]) -> None:
    import numpy as np
    from PIL import Image, ImageOps

    src, dst, size, variant = job
    with Image.open(src) as img:
        img = img.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
    if variant % 2:
        img = ImageOps.mirror(img)
    if variant >= 2:  # shifted by a few pixels, wrapping around
        img = Image.fromarray(np.roll(np.asarray(img), variant, axis=1))
    img.save(dst, quality=90)


def make_tree(sources: list[tuple[str, str]], root: Path, images: int, test_images: int, size: int) -> None:
    jobs = []
    for split, count, offset in (("train", images, 0), ("test", test_images, images)):
        for i in range(count):
            src, label = sources[(offset + i) % len(sources)]
            folder = root / split / label
            folder.mkdir(parents=True, exist_ok=True)
            jobs.append((src, str(folder / f"{i:07d}.jpg"), size, (offset + i) // len(sources)))
    with Pool(os.cpu_count()) as pool:
        for _ in pool.imap_unordered(_make, jobs, chunksize=256):
            pass


# --- memory of a process tree --------------------------------------------------------------------


def private_mb(pid: int) -> float:
    """Pss_Anon of ``pid`` and its descendants, in MB (0 for processes gone meanwhile)."""
    import psutil

    total = 0
    try:
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for proc in procs:
        try:
            for line in Path(f"/proc/{proc.pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss_Anon:"):
                    total += int(line.split()[1]) * 1024
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return total / 1e6


def run_child(args: list[str]) -> tuple[dict, float]:
    """Run this script with ``args`` in a child; (its JSON result, peak private MB)."""
    proc = subprocess.Popen([sys.executable, __file__, *args], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "TQDM_DISABLE": "1"})
    peak = 0.0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, private_mb(proc.pid))
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, _ = proc.communicate()
    stop.set()
    sampler.join()
    if proc.returncode != 0:
        raise SystemExit(f"child {' '.join(args)} failed ({proc.returncode})")
    return json.loads(out.strip().splitlines()[-1]), peak


# --- the phases (children) -----------------------------------------------------------------------


def phase_prepare(tree: Path, out: Path) -> dict:
    from kdpipe.config import DataConfig
    from kdpipe.data.prepare import prepare

    start = time.perf_counter()
    meta = prepare(DataConfig(dataset="imagefolder", root=str(tree), download=False), 0, out, out.parent / "prepare.json")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": sum(meta.counts.values()), "counts": meta.counts}


def phase_train(prepared: Path, arch: str, batch: int, in_memory: bool) -> dict:
    from kdpipe.config import AugmentConfig, RoleConfig, TrainConfig
    from kdpipe.data.prepared import load_prepared
    from kdpipe.engine.runtime import setup_runtime
    from kdpipe.engine.trainer import fit
    from kdpipe.methods import build_method
    from kdpipe.models.registry import build_model

    start = time.perf_counter()
    data = load_prepared(prepared, splits=("train", "val"), in_memory=in_memory)
    load_seconds = time.perf_counter() - start
    meta = data.meta
    train_cfg = TrainConfig(batch_size=batch, eval_batch_size=512, augment=AugmentConfig(crop_padding=8, hflip=True))
    runtime = setup_runtime(train_cfg, seed=0, arch=arch)
    student = build_model(arch, meta.num_classes, meta.channels, meta.height)
    role = RoleConfig(arch=arch, epochs=1, optimizer="sgd", lr=0.05, weight_decay=5e-4, scheduler="none")
    result = fit(build_method("none", student, None, None), role, train_cfg, data, runtime, seed=0, desc=arch)
    return {"load_seconds": load_seconds, "train_seconds": result.train_seconds,
            "images_per_second": result.images_per_second, "images": meta.counts["train"],
            "precision": runtime.precision, "val_accuracy": result.last_val_accuracy}


# --- main ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000, help="training images in the tree")
    parser.add_argument("--size", type=int, default=96, help="image side in pixels")
    parser.add_argument("--test-images", type=int, default=2000)
    parser.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="CIFAR-10 JPEG archive or tree")
    parser.add_argument("--arch", default="lightnn", help="the student trained for one epoch")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workdir", type=Path, default=None, help="kept afterwards (default: a temporary folder)")
    parser.add_argument("--skip-in-memory", action="store_true", help="time the memory-mapped path only")
    parser.add_argument("--child", choices=("prepare", "train"), help=argparse.SUPPRESS)
    parser.add_argument("--in-memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tree", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--prepared", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child == "prepare":
        print(json.dumps(phase_prepare(args.tree, args.prepared)))
        return
    if args.child == "train":
        print(json.dumps(phase_train(args.prepared, args.arch, args.batch, args.in_memory)))
        return

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="kdpipe-big-data-"))
    workdir.mkdir(parents=True, exist_ok=True)
    tree, prepared = workdir / "tree", workdir / "data" / "prepared"
    try:
        pixels_mb = args.images * 3 * args.size**2 / 1e6
        print(f"big data: {args.images:,} training + {args.test_images:,} test JPEGs of {args.size} px "
              f"({pixels_mb:,.0f} MB of training pixels); {os.cpu_count()} CPU cores")
        if not (tree / "train").is_dir():
            start = time.perf_counter()
            make_tree(source_images(args.source, workdir), tree, args.images, args.test_images, args.size)
            shutil.rmtree(workdir / "source", ignore_errors=True)
            print(f"tree made in {time.perf_counter() - start:.0f} s")

        result, peak = run_child(["--child", "prepare", "--tree", str(tree), "--prepared", str(prepared)])
        print(f"prepare (streaming):   {result['seconds']:7.1f} s  {result['images'] / result['seconds']:8.1f} images/s  "
              f"peak private memory {peak:7.0f} MB  ({result['counts']})")
        peaks = {"prepare": peak}
        speeds = {}
        for in_memory in (False, True) if not args.skip_in_memory else (False,):
            name = "in RAM" if in_memory else "memory-mapped"
            flags = ["--child", "train", "--prepared", str(prepared), "--arch", args.arch, "--batch", str(args.batch)]
            result, peak = run_child(flags + (["--in-memory"] if in_memory else []))
            speeds[name], peaks[f"train ({name})"] = result["images_per_second"], peak
            print(f"train 1 epoch, {name + ':':14s}{result['train_seconds']:7.1f} s  {result['images_per_second']:8.1f} "
                  f"images/s  peak private memory {peak:7.0f} MB  (load {result['load_seconds']:.1f} s, "
                  f"{args.arch}, {result['precision']}, val acc {result['val_accuracy']:.3f})")
        if "in RAM" in speeds:
            ratio = speeds["memory-mapped"] / speeds["in RAM"]
            print(f"memory-mapped / in-RAM training throughput: {ratio:.3f}x "
                  f"(goal >= {1 - GOAL_SLOWDOWN:.2f}x: {'met' if ratio >= 1 - GOAL_SLOWDOWN else 'NOT met'})")
        worst = max(v for k, v in peaks.items() if "in RAM" not in k)
        print(f"peak private memory of prepare and memory-mapped training: {worst:.0f} MB "
              f"(goal <= {GOAL_MB} MB: {'met' if worst <= GOAL_MB else 'NOT met'})")
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
