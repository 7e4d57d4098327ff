# Convenience targets; CI (.ci/run) calls the commands directly.
PYTHON ?= python

.PHONY: test validate validate-quick

test:
	$(PYTHON) -m pytest

# Stale dvc.lock check, forced re-run of the default pipeline, accuracy comparison with the
# committed metrics, metrics/params diffs against BASE as Markdown (see README: CI re-validation).
BASE ?= HEAD
validate:
	PYTHONPATH=src $(PYTHON) -m kdpipe.validate --base $(BASE)

# Stale check and diffs only (seconds): no re-run.
validate-quick:
	PYTHONPATH=src $(PYTHON) -m kdpipe.validate --base $(BASE) --no-repro
