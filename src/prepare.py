"""Stage prepare: data set -> data/prepared (uint8 arrays + meta.json), metrics/prepare.json."""

from kdpipe import paths
from kdpipe.data.prepare import prepare
from kdpipe.stage import run_stage

if __name__ == "__main__":
    run_stage("prepare", lambda p: prepare(p.data, p.seed, paths.PREPARED_DIR, paths.PREPARE_METRICS))
