"""Stage compare_methods (compare/dvc.yaml): every method in compare.methods on the same budget
-> metrics/methods.json, plots/methods/methods.csv."""

from kdpipe.compare import compare_methods
from kdpipe.stage import run_stage

if __name__ == "__main__":
    run_stage("compare_methods", compare_methods, dvc_file="compare/dvc.yaml")
