"""Stage quantize: student -> models/student.onnx (checked) -> static, dynamic and QAT int8 ONNX files."""

from kdpipe.quantize import quantize_student
from kdpipe.stage import run_stage

if __name__ == "__main__":
    run_stage("quantize", quantize_student)
