"""Predict the classes of image files or folders: one JSON line per image on standard output.

    python src/predict.py PATH... [--model models/student_int8.onnx] [--topk 5]

Exit status: 0 when every image was predicted, 1 when any could not be read (each has its own
line with "error"), 2 when the model cannot be used.
"""

import sys

from kdpipe.predict import main

if __name__ == "__main__":
    sys.exit(main())
