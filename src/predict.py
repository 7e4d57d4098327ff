"""Predict the classes of image files or folders: one JSON line per image on standard output.

    python src/predict.py PATH... [--model models/student_int8.onnx] [--topk 5]

Exit status: 0 when every image was predicted, 1 when any could not be read (each has its own
line with "error"), 2 when the model cannot be used.
"""

import argparse
import logging
import sys

from kdpipe.errors import KdpipeError
from kdpipe.model_file import open_model
from kdpipe.predict import predict_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
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


if __name__ == "__main__":
    sys.exit(main())
