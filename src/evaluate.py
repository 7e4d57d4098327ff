"""Stage evaluate: every model on every split -> metrics/evaluate*.json, data/eval_outputs/."""

from kdpipe.evaluate import run_evaluate
from kdpipe.stage import run_stage

if __name__ == "__main__":
    run_stage("evaluate", run_evaluate)
