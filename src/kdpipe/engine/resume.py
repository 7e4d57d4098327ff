"""Per-epoch training state, so a killed training stage continues where it stopped.

Each epoch writes ``epoch-NNNN.pt`` (method weights with its extra parts, optimiser, scheduler,
loss scaler, every RNG, the best weights so far and the logged history) atomically, then its
SHA-256 in ``epoch-NNNN.pt.sha256``. A file without a matching hash (a kill between the two
writes, a truncated or corrupted file) is never trusted: resuming falls back to the previous
good epoch, or to a fresh start, and says so. The state also records a fingerprint of what
determines the run (params, prepared data, teacher file, code); state from another run is
discarded. When the stage has written its outputs the folder is removed.

The folder is not a DVC output (``paths.resume_dir``: under the git- and DVC-ignored
``.kdpipe/``, one folder per run fingerprint): a ``persist`` output would switch off DVC's
run-cache for the stage, so that an experiment run before could not be restored in seconds.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from kdpipe.errors import KdpipeError
from kdpipe.io import sha256_file, write_text, write_with

log = logging.getLogger("kdpipe")
FORMAT = "kdpipe-training-state/1"


class CheckpointWriteError(KdpipeError):
    """The epoch's state could not be written (disk full, permissions)."""


def fingerprint(*parts: Any) -> str:
    """A short hash of JSON-able parts (params, metadata, file hashes)."""
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


PACKAGE_DIR = Path(__file__).resolve().parents[1]


def code_digest(package_dir: str | Path = PACKAGE_DIR) -> str:
    """The kdpipe sources: state saved by other code is not resumed."""
    digest = hashlib.sha256()
    for path in sorted(Path(package_dir).rglob("*.py")):
        digest.update(str(path.relative_to(package_dir)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def rng_state(generators: dict[str, torch.Generator], device: torch.device) -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "python": random.getstate(),
        # numpy's state as plain tensors and numbers, so it loads with weights_only=True
        "numpy": [torch.from_numpy(np.asarray(v)) if isinstance(v, np.ndarray) else v for v in np.random.get_state()],
        "generators": {name: g.get_state() for name, g in generators.items()},
    }
    if device.type == "cuda":  # this process's device only (every DDP rank consumes the same)
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], generators: dict[str, torch.Generator], device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    kind, keys, *rest = state["numpy"]
    np.random.set_state((kind, keys.numpy(), *rest))
    for name, g in generators.items():
        g.set_state(state["generators"][name])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def _tuples(value: Any) -> Any:
    # random.setstate wants the nested tuples back (serialisation may turn them into lists)
    return tuple(_tuples(v) for v in value) if isinstance(value, (list, tuple)) else value


class EpochCheckpoints:
    """The resumable state of one training run in ``directory``."""

    def __init__(self, directory: str | Path, run_id: str, keep: int = 2):
        self.dir = Path(directory)
        self.run_id = run_id
        self.keep = max(1, keep)

    def bound_to(self, *facts: Any) -> EpochCheckpoints:
        """The same folder, for a run also identified by ``facts`` (the resolved device, precision...)."""
        return EpochCheckpoints(self.dir, fingerprint(self.run_id, *facts), self.keep)

    def _path(self, epoch: int) -> Path:
        return self.dir / f"epoch-{epoch:04d}.pt"

    def _saved(self) -> list[tuple[int, Path]]:
        found = []
        for path in self.dir.glob("epoch-*.pt"):
            try:
                found.append((int(path.stem.split("-")[1]), path))
            except (IndexError, ValueError):
                continue
        return sorted(found)

    def _discard(self, path: Path) -> None:
        path.unlink(missing_ok=True)
        Path(f"{path}.sha256").unlink(missing_ok=True)

    def latest(self) -> dict[str, Any] | None:
        """The newest verified state of this run, or None (fresh start). Anything unusable is
        removed, with the reason logged."""
        self.dir.mkdir(parents=True, exist_ok=True)
        for stray in self.dir.glob(".*.tmp"):  # a write killed half-way
            stray.unlink(missing_ok=True)
        for epoch, path in reversed(self._saved()):
            state, problem = self._load_verified(path)
            if state is not None:
                log.info("resuming from %s (epoch %d complete)", path, epoch)
                return state
            log.warning("%s: %s; not resumed%s", path, problem, ", trying the previous epoch" if epoch > 1 else "")
            self._discard(path)
        return None

    def _load_verified(self, path: Path) -> tuple[dict[str, Any] | None, str]:
        hash_file = Path(f"{path}.sha256")
        if not hash_file.is_file():
            return None, "no .sha256 beside it (the write was interrupted)"
        try:
            if sha256_file(path) != hash_file.read_text(errors="replace").strip():
                return None, "SHA-256 mismatch (the file is truncated or corrupted)"
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 - an unreadable file is unusable, whatever the cause
            return None, f"unreadable ({exc})"
        if state.get("format") != FORMAT or state.get("run_id") != self.run_id:
            return None, "saved by a run with other params, data, teacher or code"
        return state, ""

    def save(self, epoch: int, state: dict[str, Any]) -> None:
        path = self._path(epoch)
        buffer = io.BytesIO()
        torch.save({"format": FORMAT, "run_id": self.run_id, "epoch": epoch, **state}, buffer)
        data = buffer.getvalue()
        try:
            write_with(path, lambda tmp: tmp.write_bytes(data))
            write_text(f"{path}.sha256", hashlib.sha256(data).hexdigest() + "\n")
        except OSError as exc:
            self._discard(path)
            previous = [e for e, _ in self._saved()]
            kept = f"epoch {previous[-1]} is kept" if previous else "no earlier epoch was saved"
            raise CheckpointWriteError(
                f"cannot write the training state {path} ({exc.strerror or exc}); {kept}: "
                "free space and run `dvc repro` again to resume"
            ) from None
        for _, old in self._saved()[: -self.keep]:
            self._discard(old)

    def finish(self) -> None:
        """The stage's outputs are written: the state is of no more use."""
        shutil.rmtree(self.dir, ignore_errors=True)
