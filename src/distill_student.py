"""Stage distill_student: the student distilled from the assistant (or the teacher) -> models/student.pt."""

from kdpipe.stage import run_stage
from kdpipe.training import train_role

if __name__ == "__main__":
    run_stage("distill_student", lambda p: train_role(p, "student"), distributed=True)
