"""Stage evaluate: all models on the test split -> metrics/evaluate.json, plots/evaluate/."""

from kdpipe.evaluate import run_evaluate
from kdpipe.stage import run_stage

if __name__ == "__main__":
    run_stage("evaluate", run_evaluate)
