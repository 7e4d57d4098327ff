"""Stage train_teacher: the teacher trained with cross-entropy -> models/teacher.pt."""

from kdpipe.stage import run_stage
from kdpipe.training import train_role

if __name__ == "__main__":
    run_stage("train_teacher", lambda p: train_role(p, "teacher"), distributed=True)
