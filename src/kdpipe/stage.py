"""Common entry point of the thin ``src/<stage>.py`` scripts.

Reads params.yaml once, runs the stage body, and turns a user error into one clear message
and exit status 2. On any failure it removes the stage's declared (non-persistent) outputs,
read from dvc.yaml, so nothing half-made is left for DVC to mistake for a good result.
"""

from __future__ import annotations

import logging
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from kdpipe.config import Params, load_params
from kdpipe.errors import KdpipeError

DVC_FILE = "dvc.yaml"
log = logging.getLogger("kdpipe")


def _lookup(raw: dict[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        node = node[part]
    return node


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
                path = re.sub(r"\$\{([^}]+)\}", lambda m: str(_lookup(raw_params, m.group(1).strip())), path)
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


def run_stage(name: str, body: Callable[[Params], None], dvc_file: str | Path = DVC_FILE) -> None:
    setup_logging()
    outputs = declared_outputs(name, dvc_file)
    try:
        params = load_params()
        body(params)
    except KdpipeError as exc:
        remove_outputs(outputs)
        print(f"kdpipe {name}: error: {exc}", file=sys.stderr)
        sys.exit(2)
    except BaseException:
        remove_outputs(outputs)
        raise
