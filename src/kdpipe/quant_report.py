"""Per-layer quantization error of an int8 ONNX file against its fp32 source, with ONNX Runtime's
QDQ debugging tools (``onnxruntime.quantization.qdq_loss_debug``): for every activation the
signal-to-quantization-noise ratio (SQNR, dB) of its own quantize-dequantize step and of the whole
int8 model up to that point, and for every weight the SQNR of its int8 copy. A layer far below
its neighbours is where accuracy is lost (higher is better; 8-bit steps give about 30-50 dB).
A ReLU that the quantizer folded into its input's uint8 range reports a low ``qdq`` figure of its
own (the clipping is the ReLU); read ``model`` there.

The per-layer figures come from the QDQ graph with every tensor made an output, which stops ONNX
Runtime from fusing QDQ into its int8 kernels; the file as shipped runs fused. ``logits`` compares
the two: the SQNR of the shipped file's logits next to the QDQ graph's. A large gap is a kernel
problem (such as int16 overflow on CPUs without VNNI), not a rounding one. The quantize stage
writes this report for its static and QAT int8 files to ``metrics/quantize_layers.json``.

    PYTHONPATH=src python -m kdpipe.quant_report models/student.onnx models/student_int8.onnx
    (run in a pipeline's folder: validation images from data/prepared; --images N, --json FILE)
"""

from __future__ import annotations

import argparse
import json
import math
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader
from onnxruntime.quantization.qdq_loss_debug import (
    collect_activations,
    compute_activation_error,
    create_activation_matching,
    create_weight_matching,
    modify_model_output_intermediate_tensors,
)

from kdpipe.onnx_export import INPUT_NAME, onnx_logits, ort_session

LAYERS_REPORT = Path("metrics/quantize_layers.json")  # written by the quantize stage


class _Batches(CalibrationDataReader):
    def __init__(self, x: np.ndarray, batch: int):
        self.x, self.batch = x, batch
        self.rewind()

    def get_next(self):
        return next(self._it, None)

    def rewind(self) -> None:
        self._it = iter({INPUT_NAME: self.x[i : i + self.batch]} for i in range(0, len(self.x), self.batch))


def sqnr_db(reference: np.ndarray, approximation: np.ndarray) -> float | None:
    """None where the copy is exact (no noise)."""
    signal = float(np.sum(np.square(reference, dtype=np.float64)))
    noise = float(np.sum(np.square(reference.astype(np.float64) - approximation)))
    return None if noise == 0.0 else round(10.0 * math.log10(max(signal, 1e-30) / noise), 2)


def layer_errors(fp32_path: str | Path, int8_path: str | Path, x: np.ndarray, batch: int = 16) -> dict:
    """{"logits": {qdq_graph_sqnr_db, shipped_sqnr_db}, "activations": [{tensor, qdq_sqnr_db,
    model_sqnr_db}], "weights": [{tensor, sqnr_db}]}: activations in graph order (input to
    logits), weights worst first."""
    with tempfile.TemporaryDirectory() as tmp:
        fp32_aug, int8_aug = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        modify_model_output_intermediate_tensors(str(fp32_path), str(fp32_aug))
        modify_model_output_intermediate_tensors(str(int8_path), str(int8_aug))
        float_acts = collect_activations(str(fp32_aug), _Batches(x, batch))
        int8_acts = collect_activations(str(int8_aug), _Batches(x, batch))
    # Tensors the int8 graph's pre-processing made (a fused MobileNetV3 hard-swish, say) have no
    # float twin to compare with: ONNX Runtime's error function expects one for every match.
    matching = {k: m for k, m in create_activation_matching(int8_acts, float_acts).items() if "float" in m}
    errors = compute_activation_error(matching)
    graph = onnx.load(str(fp32_path)).graph
    order = [i.name for i in graph.input] + [o for node in graph.node for o in node.output]
    activations = [
        {"tensor": name, "qdq_sqnr_db": round(float(e["qdq_err"]), 2), "model_sqnr_db": round(float(e["xmodel_err"]), 2)}
        for name, e in sorted(errors.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else len(order))
        if "qdq_err" in e
    ]
    weights = [
        {"tensor": name, "sqnr_db": sqnr_db(np.asarray(m["float"]), np.asarray(m["dequantized"]))}
        for name, m in create_weight_matching(str(fp32_path), str(int8_path)).items()
    ]
    weights.sort(key=lambda w: math.inf if w["sqnr_db"] is None else w["sqnr_db"])
    shipped = sqnr_db(onnx_logits(ort_session(fp32_path), x), onnx_logits(ort_session(int8_path), x))
    logits = {"qdq_graph_sqnr_db": activations[-1]["model_sqnr_db"] if activations else None,
              "shipped_sqnr_db": shipped}
    return {"logits": logits, "activations": activations, "weights": weights}


def main(argv: list[str] | None = None) -> None:
    from kdpipe import paths
    from kdpipe.data.prepared import load_prepared
    from kdpipe.model_file import normalise

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fp32", type=Path)
    parser.add_argument("int8", type=Path)
    parser.add_argument("--images", type=int, default=256, help="validation images run through both files")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)
    data = load_prepared(paths.PREPARED_DIR, splits=("val",))
    x = normalise(data["val"].images.numpy()[: args.images], data.meta.mean, data.meta.std)
    report = layer_errors(args.fp32, args.int8, x)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


def print_report(report: dict) -> None:
    print(f"{'activation':32} {'own QDQ dB':>10} {'model dB':>9}")
    for row in report["activations"]:
        print(f"{row['tensor']:32} {row['qdq_sqnr_db']:10.1f} {row['model_sqnr_db']:9.1f}")
    print(f"\n{'weight (worst first)':32} {'dB':>10}")
    for row in report["weights"]:
        print(f"{row['tensor']:32} {_db(row['sqnr_db']):>10}")
    logits = report["logits"]
    print(f"\nlogits SQNR dB: QDQ graph {_db(logits['qdq_graph_sqnr_db'])}, file as shipped "
          f"(fused int8 kernels) {_db(logits['shipped_sqnr_db'])}")


def _db(value: float | None) -> str:
    return "exact" if value is None else format(value, ".1f")


if __name__ == "__main__":
    main()
