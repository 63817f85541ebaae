"""A training run's log: ``log.jsonl`` (every value), ``log.csv`` (the columns the task
names), optional TensorBoard, and one line per epoch on the console."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from common.core.reports import CsvLog

log = logging.getLogger("mvss.train")

# The run's own columns of log.csv; the loss terms and validation metrics come from the
# task's criterion (``terms``) and evaluator (``LOG_KEYS``).
RUN_FIELDS = (
    "lr",
    "images_per_second",
    "skipped_samples",
    "nonfinite_steps",
    "optimizer_steps",
    "scaler_skipped_steps",  # fp16: steps the gradient scaler skipped (gradients not finite)
    "loss_scale",  # fp16: the gradient scaler's scale at the epoch's end (else empty)
)


def log_fields(task: Any) -> tuple[str, ...]:
    """``log.csv``'s header: epoch, ``train_<loss term>``, run figures, ``val_<metric>``."""
    return (
        "epoch",
        *(f"train_{t}" for t in task.criterion.terms),
        *RUN_FIELDS,
        *(f"val_{k}" for k in _metric_keys(task)),
    )


def _metric_keys(task: Any) -> tuple[str, ...]:
    return tuple(type(task.new_evaluator()).LOG_KEYS)


def _tensorboard(out: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional
        return None
    return SummaryWriter(str(out / "tensorboard"))


class RunLog:
    """Where each epoch's row goes (the main process only). A resumed run appends to both
    logs; a new run in the same folder starts both afresh (never one of each)."""

    def __init__(self, out: Path, task: Any, tensorboard: bool, resumed: bool) -> None:
        self.out = out
        self.headline = _metric_keys(task)
        self.csv = CsvLog(out / "log.csv", log_fields(task), append=resumed)
        if not resumed:
            (out / "log.jsonl").unlink(missing_ok=True)
        self.tb = _tensorboard(out) if tensorboard else None

    def write(self, row: dict[str, Any]) -> None:
        """``row``: epoch, ``train_*`` and run figures, and ``val`` (the metrics)."""
        with open(self.out / "log.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        flat = {k: v for k, v in row.items() if k != "val"}
        flat.update({f"val_{k}": v for k, v in row["val"].items()})
        self.csv.write(flat)
        if self.tb is not None:
            for k, v in flat.items():
                if isinstance(v, int | float):
                    self.tb.add_scalar(k, v, row["epoch"])
        val = row["val"]
        shown = ", ".join(
            f"{k} {val[k]:.4f}" for k in self.headline if isinstance(val.get(k), float)
        )
        val_skipped = val.get("skipped_samples") or 0
        log.info(
            "epoch %d: loss %.4f, %.2f img/s, %d skipped samples%s%s",
            row["epoch"],
            row.get("train_loss", float("nan")),
            row["images_per_second"],
            row["skipped_samples"],
            f" (and {val_skipped} in validation)" if val_skipped else "",
            f"; val {shown}" if shown else "",
        )

    def close(self) -> None:
        self.csv.close()
        if self.tb is not None:
            self.tb.close()
