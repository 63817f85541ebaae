"""Checkpoints: atomic writes, plain-data contents, safe loading (weights_only=True)."""

from __future__ import annotations

import functools
import hashlib
import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.weights import WeightsError, load_torch_file

# What last.pt holds: everything a resumed run needs.
_TRAINING_KEYS = ("model", "optimizer", "scheduler", "scaler", "epoch", "rng")
# What best.pt holds: what inference and --init use (plus its thresholds). Adam's two
# moments are twice the weights, so a best.pt with them would be three times the size,
# read (and hashed) by every command that uses it.
_BEST_KEYS = ("model", "epoch", "best_score", "config")


def best_checkpoint(state: dict[str, Any]) -> dict[str, Any]:
    """The entries of a training state that ``best.pt`` keeps (not the optimiser's, the
    scheduler's, the scaler's or the RNG states: a run resumes from ``last.pt``)."""
    return {k: state[k] for k in _BEST_KEYS if k in state}


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write with torch.save to a temp file in the same folder, then rename over ``path``,
    so a crash never leaves a half-written checkpoint."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def checkpoint_digest(path: str | Path) -> str:
    """SHA-256 of the checkpoint file: what a resumed benchmark level or a cached int8
    calibration must come from, whatever the file is called (many are called best.pt).

    One command may ask several times (thresholds, the int8 cache, the report): the file
    is read once per version, a version being its device, inode, size, and modification
    and change times (a change time cannot be set back, so a copy that keeps the
    modification time is still seen). A rewrite in place within one tick of the file
    system's clock would not be: checkpoints are written by rename, which is always seen."""
    st = os.stat(path)
    version = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    return _file_sha256(str(Path(path).resolve()), version)


@functools.lru_cache(maxsize=8)
def _file_sha256(path: str, version: tuple[int, ...]) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load one of our training checkpoints safely (no arbitrary unpickling); a file that
    is missing, unreadable, or not ours is a :class:`~models.weights.WeightsError`."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(path, "checkpoint not found")
    state = load_torch_file(path)
    missing = [k for k in _TRAINING_KEYS if not isinstance(state, dict) or k not in state]
    if missing and isinstance(state, dict) and "model" in state and "config" in state:
        raise WeightsError(
            path,
            f"it holds weights without a run's state (no {', '.join(missing)}), as "
            "best.pt does: resume from the same run's last.pt; weights alone go to --init",
        )
    if missing:
        raise WeightsError(
            path,
            f"not a training checkpoint of this toolkit (no {', '.join(missing)}; "
            "weights alone go to --init)",
        )
    return state  # type: ignore[return-value]


def read_resume_state(path: str, task_name: str, model_state: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint to continue a run of ``task_name`` whose model has ``model_state``'s
    keys and shapes; one that cannot be read, or that belongs to another task or network,
    is a user error (one line) before anything is written."""
    from common.core.user_errors import UsageError
    from models.weights import compare_state_dicts

    where, hint = f"--resume {path}", "resume needs a last.pt of a run of this script"
    try:
        state = load_checkpoint(path)
    except WeightsError as exc:
        raise UsageError(f"cannot resume from this checkpoint: {exc.reason}", where) from exc
    saved = state.get("config") if isinstance(state.get("config"), dict) else {}
    if saved.get("task") not in (None, task_name):
        raise UsageError(
            f"this checkpoint is of a {saved['task']!r} run, not {task_name!r}", where, hint
        )
    report = compare_state_dicts(model_state, state["model"])
    if not report.ok:
        raise UsageError(
            f"its weights do not fit this network: {report.describe()}",
            where,
            "same task, backbone and classes as the run it came from",
        )
    return state


def rng_state() -> dict[str, Any]:
    """RNG states as plain data (tensors, lists, numbers) so weights_only loading works."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached],
        "python": [version, list(internal), gauss],
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
