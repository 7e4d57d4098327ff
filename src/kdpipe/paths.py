"""Where stages read and write; dvc.yaml declares the same paths."""

from pathlib import Path

PREPARED_DIR = Path("data/prepared")
MODELS_DIR = Path("models")
METRICS_DIR = Path("metrics")
PLOTS_DIR = Path("plots")

TWIN = "student_no_kd"  # the student trained without distillation (same seed, recipe, budget)
STAGE_OF_ROLE = {"teacher": "train_teacher", "assistant": "train_assistant", "student": "distill_student",
                 TWIN: "train_twin"}


def checkpoint_path(role: str) -> Path:
    return MODELS_DIR / f"{role}.pt"


STATE_DIR = Path(".kdpipe")  # git- and DVC-ignored working state, never a stage output


def resume_dir(role: str, run: str) -> Path:
    """Per-epoch training state of one run (``run``: its fingerprint): a killed stage resumes
    from it; removed once the stage has written its outputs."""
    return STATE_DIR / "resume" / role / run


def train_metrics_path(role: str) -> Path:
    return METRICS_DIR / f"train_{role}.json"


def live_dir(role: str) -> Path:
    return PLOTS_DIR / "train" / role


STUDENT_ONNX = MODELS_DIR / "student.onnx"
STUDENT_INT8_ONNX = MODELS_DIR / "student_int8.onnx"
STUDENT_QAT_INT8_ONNX = MODELS_DIR / "student_qat_int8.onnx"
STUDENT_DYNAMIC_INT8_ONNX = MODELS_DIR / "student_dynamic_int8.onnx"
QUANTIZE_METRICS = METRICS_DIR / "quantize.json"
EVALUATE_METRICS = METRICS_DIR / "evaluate.json"  # the summary `dvc exp show` and `dvc metrics diff` read
EVALUATE_DETAIL = METRICS_DIR / "evaluate_detail.json"  # every metric of every model on the test split
EVALUATE_SPLITS_METRICS = METRICS_DIR / "evaluate_splits.json"
PREPARE_METRICS = METRICS_DIR / "prepare.json"
