"""Common entry point of the thin ``src/<stage>.py`` scripts.

Reads params.yaml once, runs the stage body, and turns a user error into one clear message
and exit status 2. On any failure it removes the stage's declared (non-persistent) outputs,
read from dvc.yaml, so nothing half-made is left for DVC to mistake for a good result.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import yaml

from kdpipe.config import Params, load_params, lookup
from kdpipe.distributed import die_with_launcher, is_main_process
from kdpipe.errors import KdpipeError

DVC_FILE = "dvc.yaml"
log = logging.getLogger("kdpipe")


def declared_outputs(stage: str, dvc_file: str | Path = DVC_FILE, params_file: str | Path = "params.yaml") -> list[Path]:
    """Non-persistent outputs of ``stage`` in dvc.yaml, with ``${param}`` templates resolved.
    (Paths are relative to the repository root: stages in other dvc.yaml files use ``wdir``.)"""
    try:
        spec = yaml.safe_load(Path(dvc_file).read_text())["stages"][stage]
        raw_params = yaml.safe_load(Path(params_file).read_text()) or {}
    except (OSError, KeyError, TypeError, yaml.YAMLError):
        return []
    paths = []
    for group in ("outs", "metrics", "plots"):
        for entry in spec.get(group, []) or []:
            path, opts = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
            if (opts or {}).get("persist"):
                continue
            try:
                path = re.sub(r"\$\{([^}]+)\}", lambda m: str(lookup(raw_params, m.group(1).strip())), path)
            except (KeyError, TypeError):
                continue
            paths.append(Path(path))
    return paths


def remove_outputs(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists() or path.is_symlink():
            path.unlink(missing_ok=True)


def setup_logging() -> None:
    # Our messages at INFO; third-party libraries (ONNX passes, DVC) stay at their WARNING default.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.handlers[:] = [handler]
    log.setLevel(logging.INFO)
    log.propagate = False


def relaunch_under_torchrun(nproc: int) -> None:
    """Replace this process by ``torchrun --standalone --nproc_per_node=nproc <this script>``
    (one machine; for several, start torchrun yourself with --nnodes and a rendezvous)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *sys.argv]
    log.info("train.nproc_per_node=%d: %s", nproc, " ".join(cmd))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, cmd)


def run_stage(
    name: str, body: Callable[[Params], None], dvc_file: str | Path = DVC_FILE, distributed: bool = False
) -> None:
    """Run a stage body; ``distributed`` stages (training) may run as several DDP processes, of
    which only rank 0 writes outputs and cleans up after a failure."""
    setup_logging()
    die_with_launcher()
    outputs = declared_outputs(name, dvc_file)
    main = is_main_process()
    if not main:
        log.setLevel(logging.WARNING)
    try:
        params = load_params()
        if distributed and params.train.nproc_per_node > 1 and "LOCAL_RANK" not in os.environ:
            relaunch_under_torchrun(params.train.nproc_per_node)
        body(params)
    except KdpipeError as exc:
        if main:
            remove_outputs(outputs)
        print(f"kdpipe {name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except BaseException:
        if main:
            remove_outputs(outputs)
        raise
    finally:
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
