"""What every batch job shares: its settings, its output folder, and its bookkeeping.

The three runners (:mod:`common.evaluation.localization`, :mod:`common.evaluation.three_class`,
:mod:`common.inference.crops`) are peers that each build on this module: one per-image CSV
written as it goes, failures recorded with their reasons (the other images' results are
kept), one ``summary.json``, one printed table, and the exit code (3 when some failed).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from common.core.release import RELEASE_SIZE
from common.core.reports import EXIT_SOME_FAILED, CsvLog, format_table, write_json
from common.data.masks import MaskOptions
from common.data.sources import Problem

WARNINGS_SHOWN = 5  # said on the console as they come; the rest are counted


@dataclass
class EvalSettings:
    """How a localisation run predicts, scores and writes (the scripts' shared options)."""

    threshold: float = 0.5
    image_threshold: float = 0.5
    resize: int | None = RELEASE_SIZE
    batch_size: int = 4
    workers: int = 2
    skip_existing: bool = False
    save_overlay: bool = False
    empty_f1: str = "release"
    masks: MaskOptions = field(default_factory=MaskOptions)
    quiet: bool = False  # no table printed (a benchmark prints its own)


def _source_name(test_file: Sequence[str] | str | None) -> str:
    if not test_file:
        return "inputs"
    first = test_file if isinstance(test_file, str) else test_file[0]
    if (isinstance(test_file, list) and len(test_file) > 1) or any(c in first for c in "*?["):
        return "inputs"  # several sources, or a glob: no one name fits
    return Path(first.rstrip("/")).stem or "inputs"


def output_dir(
    save_dir: str | Path, test_file: Sequence[str] | str | None, model_name: str
) -> Path:
    """``<save_dir>/<list name>/<model name>``: the release's output layout."""
    return Path(save_dir) / _source_name(test_file) / model_name


class BatchRun:
    """Bookkeeping of a batch job: the per-image CSV, the failures, the summary JSON."""

    def __init__(
        self, out: Path, fields: Sequence[str], problems: Sequence[Problem], quiet: bool = False
    ) -> None:
        self.out = out
        self.quiet = quiet  # no table printed, warnings only listed (a benchmark prints its own)
        self.failures: list[dict[str, str]] = []
        self.warnings: list[str] = []
        self.csv = CsvLog(out / "per_image.csv", fields)
        for p in problems:
            self.fail(p.where, p.reason)

    def fail(self, path: str, reason: str) -> None:
        self.failures.append({"path": path, "reason": reason})
        self.csv.write({"path": path, "status": "failed", "reason": reason})

    def warn(self, note: str) -> None:
        """An input used with a caveat (its mask's size differs from the image): the first
        few said as they come, all of them listed in summary.json."""
        self.warnings.append(note)
        if len(self.warnings) <= WARNINGS_SHOWN and not self.quiet:
            tqdm.write(f"warning: {note}", file=sys.stderr)

    def finish(self, metrics: dict[str, Any], table_keys: Sequence[str]) -> int:
        """Write summary.json (all of ``metrics``), print the table (``table_keys`` and
        the failure count); the exit code says whether all went well."""
        self.csv.close()
        metrics.update(num_failed=len(self.failures), failures=self.failures)
        metrics.update(num_warnings=len(self.warnings), warnings=self.warnings)
        write_json(self.out / "summary.json", metrics)
        if not self.quiet:
            print(format_table(metrics, [*table_keys, "num_failed"]))
            print(f"\nper-image results: {self.csv.path}\nsummary: {self.out / 'summary.json'}")
            if self.failures:
                print(f"{len(self.failures)} input(s) failed; see the CSV (status=failed)")
        if len(self.warnings) > WARNINGS_SHOWN and not self.quiet:
            print(
                f"{len(self.warnings)} warnings in all (the first {WARNINGS_SHOWN} above); "
                "every one is under 'warnings' in summary.json",
                file=sys.stderr,
            )
        return EXIT_SOME_FAILED if self.failures else 0


STAMP = "maps.json"  # what made a folder's maps (or scores): checked before they are reused


def stamp_problem(folder: Path, stamp: dict) -> str | None:
    """What differs between ``stamp`` and the one that made the results in ``folder``
    (``"… differ"``, or ``"no record of what made them"``); None when they match or the
    folder holds nothing yet."""
    if not folder.exists() or not any(folder.iterdir()):
        return None
    previous = read_stamp(folder)
    if previous is None:
        return "no record of what made them"
    differs = sorted(k for k in {*stamp, *previous} if stamp.get(k) != previous.get(k))
    return ", ".join(differs) + " differ" if differs else None


def read_stamp(folder: Path) -> dict | None:
    """The stamp of what made the results in ``folder``; None where there is none, or it
    cannot be read as one."""
    try:
        stamp = json.loads((Path(folder) / STAMP).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    return stamp if isinstance(stamp, dict) else None


def write_stamp(folder: Path, stamp: dict) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{STAMP}.tmp"
    tmp.write_text(json.dumps(stamp, indent=1, sort_keys=True) + "\n")
    tmp.replace(folder / STAMP)
