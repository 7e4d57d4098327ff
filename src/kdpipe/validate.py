"""CI re-validation: is the committed dvc.lock up to date, and does a re-run give its numbers?

    PYTHONPATH=src python -m kdpipe.validate [--base REV] [--summary FILE] [--no-repro]

1. Stale check (before anything runs): ``dvc status`` of every pipeline (dvc.yaml and
   compare/dvc.yaml) must show no changed command, code/data dependency or parameter, and in
   dvc.lock every dependency on another stage's output must carry that output's recorded hash.
   Outputs that are merely absent (a fresh clone: models and prepared data live in the DVC cache)
   are fine.
2. The default pipeline is re-run with ``dvc repro --force dvc.yaml``: every stage recomputed,
   nothing restored from DVC's run-cache.
3. Every accuracy in the pipeline's JSON metrics outputs (keys containing "acc"; timings never)
   is compared with the committed value: a change larger than ``validate.tolerance``
   (params.yaml), down or up, fails. Runs on the same CPU family (``cpu_isa`` in the training
   metrics) and precision as the committed run are deterministic, so the report expects every
   accuracy identical there and says whether it is; on another family or precision an exact
   comparison is impossible (another floating-point path trains another trajectory), and the
   report says so and compares within ``validate.cross_machine_tolerance`` instead.
4. Markdown to stdout and to ``--summary`` (default: $GITHUB_STEP_SUMMARY): the comparison and
   ``dvc metrics diff`` / ``dvc params diff`` against ``--base``.

Exit status 0 when all checks pass, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from kdpipe.config import lookup

DEFAULT_PIPELINE = "dvc.yaml"
FIX = "run `dvc repro` (and `dvc repro compare/dvc.yaml` for the method comparison), then commit dvc.lock and metrics"
# Time-like metrics differ from run to run and machine to machine: never compared.
TIMING = re.compile(r"second|latency|throughput|speedup|time|duration|fps|(^|_)(ms|s)$")


# --- metrics -------------------------------------------------------------------------------------


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [2], "d": {}}`` -> ``{"a.b": 1, "c.0": 2, "d": {}}``."""
    if isinstance(tree, dict | list) and not tree and prefix:
        return {prefix: tree}
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def is_timing(key: str) -> bool:
    return any(TIMING.search(part) for part in key.lower().split("."))


def is_accuracy(key: str) -> bool:
    return "acc" in key.lower() and not is_timing(key)


def accuracies(tree: Any) -> dict[str, float]:
    return {
        k: v for k, v in flatten(tree).items()
        if is_accuracy(k) and isinstance(v, int | float) and not isinstance(v, bool)
    }


@dataclass
class Row:
    file: str
    key: str
    committed: float | None
    new: float | None
    verdict: str  # "same", "better/worse (within tolerance)", "REGRESSION", "CHANGED", "MISSING", "new"

    @property
    def failed(self) -> bool:
        return self.verdict in ("REGRESSION", "CHANGED", "MISSING")


def compare(committed: dict[str, Any], new: dict[str, Any], tolerance: float) -> list[Row]:
    """Accuracies of each metrics file (name -> parsed JSON), committed against re-run."""
    rows = []
    for file in sorted(set(committed) | set(new)):
        old_acc, new_acc = accuracies(committed.get(file)), accuracies(new.get(file))
        for key in list(old_acc) + [k for k in new_acc if k not in old_acc]:
            old, cur = old_acc.get(key), new_acc.get(key)
            if cur is None:
                verdict = "MISSING"
            elif math.isnan(cur):
                verdict = "REGRESSION"
            elif old is None:
                verdict = "new"
            elif cur == old:
                verdict = "same"
            elif abs(cur - old) > tolerance + 1e-9:  # up as well as down: the committed numbers are stale
                verdict = "REGRESSION" if cur < old else "CHANGED"
            elif cur > old:
                verdict = "better (within tolerance)"
            else:
                verdict = "worse (within tolerance)"
            rows.append(Row(file, key, old, cur, verdict))
    return rows


def metrics_files(dvc_file: str | Path = DEFAULT_PIPELINE) -> list[str]:
    """Every JSON output of a pipeline's stages (the summaries under ``metrics:`` and the detail
    beside them), relative to the repository root."""
    dvc_file = Path(dvc_file)
    spec = yaml.safe_load(dvc_file.read_text()) or {}
    found = []
    for stage in (spec.get("stages") or {}).values():
        for group in ("outs", "metrics"):
            for entry in stage.get(group, []) or []:
                path = entry if isinstance(entry, str) else next(iter(entry))
                if path.endswith(".json") and "$" not in path:
                    found.append(os.path.normpath(dvc_file.parent / stage.get("wdir", ".") / path))
    return sorted(found)


RUN_FACTS = ("cpu_isa", "precision")  # what decides whether a re-run can match exactly


def run_facts(metrics: dict[str, Any]) -> dict[str, Any]:
    """CPU family and precision of a run, from its student's training metrics."""
    train = next((v for k, v in metrics.items() if k.endswith("train_student.json")), None) or {}
    return {k: train.get(k) for k in RUN_FACTS}


def same_machine(committed: dict[str, Any], new: dict[str, Any]) -> bool:
    """Did both runs take the same floating-point path (CPU family and precision recorded and equal)?"""
    old = run_facts(committed)
    return old == run_facts(new) and None not in old.values()


def tolerance_for(committed: dict[str, Any], new: dict[str, Any], config: Any) -> float:
    """``validate.tolerance`` on the committed run's machine family, else the cross-machine one."""
    return config.tolerance if same_machine(committed, new) else config.cross_machine_tolerance


def exactness_markdown(committed: dict[str, Any], new: dict[str, Any], rows: list[Row]) -> str:
    old, cur = run_facts(committed), run_facts(new)
    same, compared = identical(rows)
    if same_machine(committed, new):
        verdict = ("every accuracy is identical, as a deterministic run must give" if same == compared
                   else f"**only {same} of {compared} accuracies are identical**, although determinism promises all")
        return f"Same CPU family and precision as the committed run ({_facts(cur)}): {verdict}."
    return (f"**Exact comparison is impossible**: the committed metrics were made on {_facts(old)}, this re-run on "
            f"{_facts(cur)}; floating-point results differ between CPU families and precisions, so the accuracies "
            "are compared within the cross-machine tolerance.")


def identical(rows: list[Row]) -> tuple[int, int]:
    """(identical, compared) accuracies. A "new" row has no committed value to compare with: a new
    key, or a DVC-cached detail file this checkout did not hold (a fresh clone)."""
    compared = [r for r in rows if r.verdict != "new"]
    return sum(r.verdict == "same" for r in compared), len(compared)


def _facts(facts: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v if v is not None else 'unrecorded'}" for k, v in facts.items())


def read_metrics(files: list[str]) -> dict[str, Any]:
    return {f: json.loads(Path(f).read_text()) for f in files if Path(f).is_file()}


# --- stale check ---------------------------------------------------------------------------------


def load_locks(dvc_files: list[str]) -> dict[str, dict]:
    """Stage address -> its dvc.lock entry, with paths relative to the repository root."""
    entries = {}
    for dvc_file in dvc_files:
        lock = Path(dvc_file).with_name("dvc.lock")
        if not lock.is_file():
            continue
        stages = (yaml.safe_load(Path(dvc_file).read_text()) or {}).get("stages", {})
        for name, entry in (yaml.safe_load(lock.read_text()) or {}).get("stages", {}).items():
            wdir = Path(dvc_file).parent / (stages.get(name.split("@")[0], {}) or {}).get("wdir", ".")
            entry = dict(entry)
            for group in ("deps", "outs"):
                entry[group] = [{**d, "path": os.path.normpath(wdir / d["path"])} for d in entry.get(group, [])]
            entry["params"] = {os.path.normpath(wdir / f): v for f, v in (entry.get("params") or {}).items()}
            address = name if dvc_file == DEFAULT_PIPELINE else f"{dvc_file}:{name}"
            entries[address] = entry
    return entries


def lock_outputs(locks: dict[str, dict]) -> dict[str, tuple[str, str | None]]:
    """Output path -> (producing stage, recorded md5)."""
    return {o["path"]: (stage, o.get("md5")) for stage, e in locks.items() for o in e["outs"]}


def inconsistent_links(locks: dict[str, dict]) -> dict[str, list[str]]:
    """Stages whose dvc.lock records another stage's output with a hash that stage no longer
    produces: they were not re-run after it. (``dvc status`` cannot see this in a clone without
    the outputs.)"""
    outs = lock_outputs(locks)
    found: dict[str, list[str]] = {}
    for stage, entry in locks.items():
        for dep in entry["deps"]:
            producer, md5 = outs.get(dep["path"], (None, None))
            if producer and producer != stage and dep.get("md5") != md5:
                found.setdefault(stage, []).append(f"{dep['path']} (output of {producer}) changed since it ran")
    return found


def param_changes(locked: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """Leaf-level differences between a stage's params in dvc.lock (``{"distill": {...}}`` or
    ``{"train.eval_batch_size": 512}``) and the current params file."""
    changes = []
    for key, value in locked.items():
        try:
            now = lookup(current, key)
        except KeyError:
            now = None
        old, new = flatten(value, key), flatten(now, key)
        for leaf in sorted(set(old) | set(new)):
            if leaf not in new:
                changes.append(f"{leaf} (removed)")
            elif leaf not in old:
                changes.append(f"{leaf} (new: {new[leaf]!r})")
            elif old[leaf] != new[leaf]:
                changes.append(f"{leaf} ({old[leaf]!r} -> {new[leaf]!r})")
    return changes


def _producer(path: str, outs: dict[str, tuple[str, str | None]]) -> str | None:
    for out, (stage, _) in outs.items():
        if path == out or path.startswith(out + "/"):
            return stage
    return None


def stale_stages(
    status: dict[str, Any], locks: dict[str, dict], params: dict[str, dict] | None = None
) -> dict[str, list[str]]:
    """What makes each stage stale, from ``dvc status --json`` (stage address -> changes) and the
    dvc.lock entries (``load_locks``). ``params``: params file -> current content, to name keys.

    Stale: a changed command; a changed parameter; a code or data dependency modified, new or
    deleted. Not stale: another stage's output reported deleted or modified as a dependency (a
    fresh clone has none of the DVC-cached outputs); whether dvc.lock links each stage to the
    output its producer recorded is checked in dvc.lock itself (``inconsistent_links``).
    """
    params = params or {}
    outs = lock_outputs(locks)
    params_files = set(params) | {f for e in locks.values() for f in e["params"]}
    stale: dict[str, list[str]] = {}
    for stage, changes in status.items():
        reasons = []
        for change in changes:
            if change == "changed command":
                reasons.append("command changed")
            if not isinstance(change, dict):
                continue
            for path, state in change.get("changed deps", {}).items():
                if isinstance(state, dict) or path in params_files:
                    locked = locks.get(stage, {}).get("params", {}).get(path, {})
                    keys = param_changes(locked, params.get(path, {})) or list(state if isinstance(state, dict) else [])
                    reasons.append(f"params {', '.join(keys) if keys else path + ' ' + str(state)}")
                elif _producer(path, outs) not in (None, stage):
                    continue
                else:
                    reasons.append(f"{path} {state}")
        if reasons and stage not in locks:
            reasons = ["not in dvc.lock (never reproduced)"]
        if reasons:
            stale[stage] = reasons
    for stage, reasons in inconsistent_links(locks).items():
        stale.setdefault(stage, []).extend(reasons)
    return stale


def modified_outputs(status: dict[str, Any]) -> list[str]:
    """Outputs present but unlike dvc.lock (say, a hand-edited metrics file): not stale code or
    params, but worth a note; the re-run recomputes them."""
    return sorted(
        path
        for changes in status.values()
        for change in changes
        if isinstance(change, dict)
        for path, state in change.get("changed outs", {}).items()
        if state == "modified"
    )


# --- commands ------------------------------------------------------------------------------------


def dvc(*args: str, capture: bool = True) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "dvc", *args]
    if capture:
        return subprocess.run(cmd, capture_output=True, text=True, check=False)
    return subprocess.run(cmd, stdout=sys.stderr, check=False)  # stdout stays the report


def pipelines() -> list[str]:
    """The default pipeline and the comparison. Experiment pipelines (experiments/<name>/) are not
    re-validated: they need data outside the repository and run for hours, and one may be committed
    part-way (its page says which stages ran)."""
    found = subprocess.run(["git", "ls-files", "dvc.yaml", "*/dvc.yaml"], capture_output=True, text=True, check=False)
    tracked = [f for f in found.stdout.split() if not f.startswith("experiments/")]
    files = sorted(set(tracked) | {DEFAULT_PIPELINE}, key=lambda f: (f != DEFAULT_PIPELINE, f))
    return [f for f in files if Path(f).is_file()]


def check_stale(dvc_files: list[str]) -> tuple[dict[str, list[str]], list[str]]:
    proc = dvc("status", "--json", *dvc_files)
    if proc.returncode != 0:
        raise RuntimeError(f"dvc status failed:\n{proc.stderr}")
    status = json.loads(proc.stdout or "{}")
    locks = load_locks(dvc_files)
    params_files = {p for e in locks.values() for p in e["params"]}
    params = {p: yaml.safe_load(Path(p).read_text()) or {} for p in params_files if Path(p).is_file()}
    return stale_stages(status, locks, params), modified_outputs(status)


def _fmt(value: float | None) -> str:
    return "" if value is None else f"{value:.6g}"


def comparison_markdown(rows: list[Row], tolerance: float) -> str:
    lines = [
        f"### Accuracies: committed vs re-run (fail on a change > {tolerance:g})",
        "",
        "| metric | committed | re-run | diff | verdict |",
        "|---|---:|---:|---:|---|",
    ]
    for r in rows:
        diff = "" if r.committed is None or r.new is None else f"{r.new - r.committed:+.6g}"
        diff = "0" if diff in ("+0", "-0") else diff
        verdict = f"**{r.verdict}**" if r.failed else r.verdict
        lines.append(f"| {r.file}: {r.key} | {_fmt(r.committed)} | {_fmt(r.new)} | {diff} | {verdict} |")
    same, compared = identical(rows)
    lines += ["", f"{same} of {compared} committed accuracies identical in the re-run; timings ignored."]
    if compared < len(rows):
        lines.append(f"{len(rows) - compared} more (\"new\") had no committed value in this checkout.")
    return "\n".join(lines)


def diff_markdown(kind: str, base: str) -> tuple[str, bool]:
    proc = dvc(kind, "diff", base, "--md")
    title = f"### `dvc {kind} diff {base}`"
    if proc.returncode != 0:
        return f"{title}\n\nfailed: {proc.stderr.strip()}", False
    table = proc.stdout.strip()
    return f"{title}\n\n{table if table.count(chr(10)) >= 2 else '_No changes._'}", True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kdpipe.validate", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--base", default="HEAD", help="git revision the metrics and params diffs compare with")
    parser.add_argument(
        "--summary", default=os.environ.get("GITHUB_STEP_SUMMARY"),
        help="also append the Markdown report to this file ($GITHUB_STEP_SUMMARY when set)",
    )
    parser.add_argument("--no-repro", action="store_true", help="only the stale check and the diffs; no re-run")
    args = parser.parse_args(argv)

    report = ["## kdpipe re-validation", ""]
    failures = []

    dvc_files = pipelines()
    try:
        stale, modified = check_stale(dvc_files)
    except RuntimeError as exc:
        return finish(report + [f"**{exc}**"], args.summary, 1)
    if stale:
        report.append(f"**dvc.lock is stale** ({', '.join(dvc_files)}): these stages changed since they ran:\n")
        report += [f"- `{stage}`: {'; '.join(reasons)}" for stage, reasons in stale.items()]
        report.append(f"\nFix: {FIX}.")
        return finish(report, args.summary, 1)
    report.append(f"dvc.lock is up to date with code and params ({', '.join(dvc_files)}).")
    if modified:
        report.append(f"\nNote: outputs differ from dvc.lock: {', '.join(modified)}.")

    if not args.no_repro:
        from kdpipe.config import load_params

        files = metrics_files()
        committed = read_metrics(files)
        print(f"kdpipe validate: dvc repro --force {DEFAULT_PIPELINE} (every stage recomputed)", file=sys.stderr)
        if dvc("repro", "--force", DEFAULT_PIPELINE, capture=False).returncode != 0:
            return finish(report + ["", "**`dvc repro` failed** (see the log)."], args.summary, 1)
        rerun = read_metrics(files)
        tolerance = tolerance_for(committed, rerun, load_params().validation)
        rows = compare(committed, rerun, tolerance)
        report += ["", exactness_markdown(committed, rerun, rows), "", comparison_markdown(rows, tolerance)]
        failures += [f"{r.file}: {r.key} {r.verdict}: committed {_fmt(r.committed)}, re-run {_fmt(r.new)}"
                     for r in rows if r.failed]

    for kind in ("metrics", "params"):
        text, ok = diff_markdown(kind, args.base)
        report += ["", text]
        if not ok:
            failures.append(f"dvc {kind} diff {args.base} failed")

    if failures:
        report += ["", "**Failed:**", ""] + [f"- {f}" for f in failures]
    else:
        report += ["", "**Passed.**"]
    return finish(report, args.summary, 1 if failures else 0)


def finish(report: list[str], summary: str | None, code: int) -> int:
    text = "\n".join(report) + "\n"
    print(text, end="")
    if summary:
        with open(summary, "a") as fh:
            fh.write(text)
    return code


if __name__ == "__main__":
    sys.exit(main())
