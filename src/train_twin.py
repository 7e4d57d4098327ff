"""Stage train_twin: the student's no-KD twin -> models/student_no_kd.pt. Same architecture,
recipe, seed (so the same initial weights and batch order) and budget as distill_student;
cross-entropy on the labels only. evaluate sets the two side by side: what distillation bought."""

from kdpipe.stage import run_stage
from kdpipe.training import train_twin

if __name__ == "__main__":
    run_stage("train_twin", train_twin, distributed=True)
