"""Stage train_assistant: the assistant distilled from the teacher -> models/assistant.pt."""

from kdpipe.stage import run_stage
from kdpipe.training import train_role

if __name__ == "__main__":
    run_stage("train_assistant", lambda p: train_role(p, "assistant"), distributed=True)
