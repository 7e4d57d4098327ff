"""Stage quantize: student -> models/student.onnx (checked) -> models/student_int8.onnx."""

from kdpipe.quantize import quantize_student
from kdpipe.stage import run_stage

if __name__ == "__main__":
    run_stage("quantize", quantize_student)
