"""Stage figures: evaluate's results -> plots/evaluate/ (charts, reports, PNGs)."""

from kdpipe.figures import run_figures
from kdpipe.stage import run_stage

if __name__ == "__main__":
    run_stage("figures", run_figures)
