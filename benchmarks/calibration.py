"""Static int8 calibration methods side by side on real images (issue: quantization on photos).

    python benchmarks/calibration.py --checkpoint experiments/cifar10_cpu/models/teacher_fastnet_fastnet_s.pt \
        --prepared experiments/cifar10_cpu/data/prepared [--samples 512] [--seed 42]

Exports the checkpoint to ONNX, quantizes it with each of minmax / entropy / percentile (per-channel
weights, the quantize stage's settings, the same calibration images drawn from the training split)
and prints fp32 and int8 accuracy on the validation and test splits, and each file's size.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

import torch  # noqa: E402

from kdpipe.data.batches import BatchTransform  # noqa: E402
from kdpipe.data.prepared import load_prepared  # noqa: E402
from kdpipe.models.checkpoint import load_checkpoint  # noqa: E402
from kdpipe.onnx_export import export_onnx  # noqa: E402
from kdpipe.quantize import CALIBRATION_METHODS, calibration_images, onnx_accuracy, quantize_int8  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True, help="a kdpipe checkpoint (.pt)")
    parser.add_argument("--prepared", type=Path, required=True, help="the data/prepared folder it was trained on")
    parser.add_argument("--samples", type=int, default=512, help="calibration images from the training split")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--opset", type=int, default=18)
    args = parser.parse_args(argv)

    model, info = load_checkpoint(args.checkpoint)
    data = load_prepared(args.prepared)
    transform = BatchTransform(data.meta, torch.device("cpu"), channels_last=False)
    splits = {name: (transform(data[name].images).numpy(), data[name].labels.numpy()) for name in ("val", "test")}
    train = data["train"]
    calib = transform(calibration_images(train.images, train.labels, args.samples, args.seed)).numpy()
    print(f"{args.checkpoint} ({info.arch}) on {args.prepared}: val {len(splits['val'][1])}, test "
          f"{len(splits['test'][1])} images; {len(calib)} calibration images; per-channel int8, reduced range")
    print(f"{'file':22} {'val acc':>8} {'test acc':>8} {'MB':>7} {'seconds':>8}")
    with tempfile.TemporaryDirectory() as tmp:
        fp32 = Path(tmp) / "fp32.onnx"
        export_onnx(model, info, fp32, args.opset)
        rows = {"fp32": (fp32, 0.0)}
        for method in CALIBRATION_METHODS:
            started = time.perf_counter()
            path = Path(tmp) / f"{method}.onnx"
            quantize_int8(fp32, path, calib, method, per_channel=True)
            rows[f"int8 {method}"] = (path, time.perf_counter() - started)
        for name, (path, seconds) in rows.items():
            val, test = (onnx_accuracy(path, *splits[s]) for s in ("val", "test"))
            print(f"{name:22} {100 * val:7.2f}% {100 * test:7.2f}% {path.stat().st_size / 1e6:7.2f} {seconds:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
