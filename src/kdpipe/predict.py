"""Predict classes of image files with any model the pipeline writes (.pt or .onnx).

Images are decoded and normalised exactly as prepare and training do (same channel conversion,
same resampling to the model's input size, the training mean and std carried in the model file),
then written as one JSON line each: ``path``, ``label``, ``probability``, ``topk``. A file that
cannot be read gets a line with ``error`` and does not stop the others.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import numpy as np
import torch

from kdpipe.data.sources.decode import decode_files, is_image_file
from kdpipe.errors import KdpipeError
from kdpipe.model_file import ModelFile, normalise, open_model

CHUNK = 1024  # images decoded and held at once
log = logging.getLogger("kdpipe")


def find_images(inputs: list[str]) -> Iterator[tuple[str, str | None]]:
    """(path, error) for every input file and every image file under input folders, in order; a
    folder's other files are counted and named on standard error."""
    for raw in inputs:
        path = Path(raw)
        if path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file())
            found = [p for p in files if is_image_file(p.name)]
            others = [str(p) for p in files if not is_image_file(p.name)]
            if others:
                log.warning("%s: skipped %d file(s) that are not images Pillow reads: %s%s", path, len(others),
                            ", ".join(others[:5]), f" and {len(others) - 5} more" if len(others) > 5 else "")
            if not found:
                yield str(path), "no image files (any format Pillow reads) under this folder"
            for p in found:
                yield str(p), None
        elif path.is_file():
            yield str(path), None
        else:
            yield str(path), "no such file or folder"


def _chunks(items: Iterator[tuple[str, str | None]], size: int) -> Iterator[list[tuple[str, str | None]]]:
    chunk: list[tuple[str, str | None]] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_files(
    model: ModelFile, inputs: list[str], topk: int = 5, batch_size: int = 256, threads: int | None = None,
    workers: int = 1, out: TextIO | None = None,
) -> tuple[int, int]:
    """Write a JSON line per image (to ``out``, default standard output); returns (predicted, failed)."""
    out = out or sys.stdout
    channels, height, width = model.image_shape
    k = max(1, min(topk, len(model.class_names)))
    done = failed = 0
    with model.predictor(threads) as run:
        for chunk in _chunks(find_images(inputs), CHUNK):
            readable = [p for p, err in chunk if err is None]
            decoded = {d.path: d for d in decode_files(readable, channels, (height, width), workers, desc="predict",
                                                          resize=model.resize)}
            good = [p for p in readable if decoded[p].array is not None]
            probs: dict[str, np.ndarray] = {}
            for start in range(0, len(good), batch_size):
                names = good[start : start + batch_size]
                x = normalise(np.stack([decoded[p].array for p in names]), model.mean, model.std)
                p = torch.softmax(torch.from_numpy(run(x)).double(), dim=1).numpy()
                probs.update(zip(names, p))
            for path, err in chunk:
                err = err or (decoded[path].error if path in decoded else None)
                if err is not None:
                    failed += 1
                    out.write(json.dumps({"path": path, "error": err}) + "\n")
                    continue
                row = probs[path]
                order = np.argsort(-row, kind="stable")[:k]
                out.write(json.dumps({
                    "path": path,
                    "label": model.class_names[order[0]],
                    "probability": round(float(row[order[0]]), 6),
                    "topk": [{"label": model.class_names[i], "probability": round(float(row[i]), 6)} for i in order],
                }) + "\n")
                done += 1
            out.flush()
    return done, failed


CLI_DOC = "Predict the classes of image files or folders: one JSON line per image on standard output."


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kdpipe-predict", description=CLI_DOC, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders (searched recursively)")
    parser.add_argument("--model", default="models/student_int8.onnx", help="a kdpipe .pt checkpoint or .onnx file")
    parser.add_argument("--topk", type=int, default=5, help="classes listed per image (capped at the class count)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the runtime's choice)")
    parser.add_argument("--workers", type=int, default=1, help="image decoding processes (0 = all cores)")
    args = parser.parse_args(argv)
    if args.topk < 1 or args.batch_size < 1:
        parser.error("--topk and --batch-size must be at least 1")
    logging.basicConfig(level=logging.WARNING, format="%(message)s", stream=sys.stderr)
    try:
        model = open_model(args.model)
    except KdpipeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    done, failed = predict_files(model, args.paths, args.topk, args.batch_size, args.threads, args.workers)
    if failed:
        print(f"{failed} of {done + failed} images could not be predicted (see their \"error\" lines)", file=sys.stderr)
    return 1 if failed else 0
