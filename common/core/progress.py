"""Progress bars that suit where they are written.

On a terminal a normal tqdm bar. In a file or a pipe (CI, cluster logs, ``nohup``) a bar
redrawn with carriage returns turns into thousands of fragments, so there each update is
one plain line, written at most every ``MVSS_PROGRESS_INTERVAL`` seconds (default 30),
plus the first and the last.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Iterable
from typing import IO, Any, TypeVar

from tqdm import tqdm

T = TypeVar("T")

INTERVAL_ENV = "MVSS_PROGRESS_INTERVAL"
DEFAULT_INTERVAL_S = 30.0
LOG_FORMAT = "{desc}: {n_fmt}/{total_fmt} {unit} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"
_CONTROL = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|\r")


class _Lines:
    """A stream wrapper turning tqdm's in-place redraws into whole lines."""

    def __init__(self, stream: IO[str]):
        self.stream = stream

    def write(self, text: str) -> int:
        for part in _CONTROL.split(text):
            part = part.strip()
            if part:
                self.stream.write(part + "\n")
        return len(text)

    def flush(self) -> None:
        self.stream.flush()


class _LogBar(tqdm):
    """Off a terminal: ``set_postfix`` updates the values shown but waits for the next
    periodic line instead of printing one per call."""

    def set_postfix(self, ordered_dict: Any = None, refresh: bool = True, **kwargs: Any) -> None:
        super().set_postfix(ordered_dict, refresh=False, **kwargs)


def _interval() -> float:
    try:
        return max(0.0, float(os.environ.get(INTERVAL_ENV, DEFAULT_INTERVAL_S)))
    except ValueError:
        return DEFAULT_INTERVAL_S


def _is_terminal(stream: Any) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed stream
        return False


def progress(
    iterable: Iterable[T],
    *,
    desc: str,
    unit: str = "it",
    total: int | None = None,
    disable: bool = False,
    stream: IO[str] | None = None,
) -> tqdm:
    """A tqdm over ``iterable``: a live bar on a terminal, periodic lines elsewhere."""
    out = sys.stderr if stream is None else stream
    if _is_terminal(out):
        return tqdm(iterable, desc=desc, unit=unit, total=total, disable=disable, file=out)
    interval = _interval()
    return _LogBar(
        iterable,
        desc=desc,
        unit=unit,
        total=total,
        disable=disable,
        file=_Lines(out),
        mininterval=interval,
        maxinterval=max(interval, 1.0) * 4,
        miniters=1,
        ascii=True,
        dynamic_ncols=False,
        bar_format=LOG_FORMAT,
    )
