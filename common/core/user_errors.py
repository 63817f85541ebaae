"""User errors: one clear line on stderr and exit code 2, before any work starts.

Every script runs its body through :func:`run_cli`. A :class:`UsageError` (a wrong option,
a missing or unreadable input, an output that cannot be written, a checkpoint that does
not fit) prints ``error: <what> (<the file or option>)`` and, where one helps, a hint,
and the script exits with 2. Anything else is a bug and keeps its traceback. With
``--debug`` on the command line or ``MVSS_DEBUG=1`` in the environment, user errors show
their traceback too.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports a Ctrl-C
DEBUG_FLAG = "--debug"
DEBUG_ENV = "MVSS_DEBUG"


class UsageError(Exception):
    """A mistake of the user's: what is wrong, where (a file or an option), a hint."""

    def __init__(self, what: str, where: str | Path | None = None, hint: str | None = None):
        super().__init__(what)
        self.what = what
        self.where = None if where is None else str(where)
        self.hint = hint

    def line(self) -> str:
        text = f"error: {self.what}"
        if self.where:
            text += f" ({self.where})"
        if self.hint:
            text += f"; {self.hint}"
        return " ".join(text.split())  # one line, whatever the parts held


def clip(text: str, limit: int = 300) -> str:
    """A long reason cut at a word boundary, with brackets closed, for a one-line error."""
    text = " ".join(text.split())
    if len(text) <= limit:
        return text
    cut = text[:limit].rsplit(" ", 1)[0].rstrip(",;:")
    opened = cut.count("(") - cut.count(")")
    return cut + " …" + ")" * max(0, opened)


def _debugging(argv: Sequence[str]) -> bool:
    return DEBUG_FLAG in argv or os.environ.get(DEBUG_ENV, "") not in ("", "0")


def option_given(argv: Sequence[str], prefix: str) -> bool:
    """Whether the command line names an option starting with ``prefix`` (any of its
    spellings, and argparse's abbreviations): a default that follows the checkpoint or
    the task must not override what the user typed."""
    return any(a.startswith(prefix) for a in argv)


def run_cli(body: Callable[[list[str]], int], argv: Sequence[str] | None = None) -> int:
    """Run a script's ``body(argv)``; a :class:`UsageError` becomes one line on stderr
    (from rank 0 only under torchrun) and exit code 2, Ctrl-C one line and exit code 130
    (what was written stays: rerunning resumes where a script says it does)."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = _debugging(args)
    args = [a for a in args if a != DEBUG_FLAG]
    try:
        return body(args)
    except UsageError as exc:
        if os.environ.get("RANK", "0") == "0":
            if debug:
                traceback.print_exc()
            print(exc.line(), file=sys.stderr, flush=True)
        return EXIT_USAGE
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":
            if debug:
                traceback.print_exc()
            print(
                "\ninterrupted (Ctrl-C); files already written are kept",
                file=sys.stderr,
                flush=True,
            )
        return EXIT_INTERRUPTED


_ARGUMENT_MESSAGE = re.compile(r"^argument (?P<option>[^:]+): (?P<what>.*)$", re.DOTALL)


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are :class:`UsageError` (one line, exit 2) instead
    of a usage dump. ``--debug`` is listed in the help (:func:`run_cli` takes it off the
    command line before parsing)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("allow_abbrev", False)  # a typo never silently means another option
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.add_argument(
            DEBUG_FLAG,
            action="store_true",
            default=argparse.SUPPRESS,
            help=f"show the traceback of user errors too (or set {DEBUG_ENV}=1)",
        )

    def error(self, message: str) -> None:  # type: ignore[override]
        match = _ARGUMENT_MESSAGE.match(message)
        if match:
            option = match["option"].split("/")[0]
            raise UsageError(match["what"], option, f"see {self.prog} --help")
        raise UsageError(message, hint=f"see {self.prog} --help")


# ----------------------------------------------------------------------------- option types


def open_unit_interval(text: str) -> float:
    """A threshold: a number strictly between 0 and 1."""
    value = _number(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1), got {text}")
    return value


def probability(text: str) -> float:
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def non_negative_number(text: str) -> float:
    value = _number(text)
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def positive_int(text: str) -> int:
    value = _integer(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def non_negative_int(text: str) -> int:
    value = _integer(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def at_least(minimum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        value = _integer(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {text}")
        return value

    parse.__name__ = f"integer ≥ {minimum}"
    return parse


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from exc


# ----------------------------------------------------------------------------- checks


def check_stride(stride: int, size: int | None, option: str, size_option: str) -> None:
    """A tile or crop stride at most its window (equal: windows side by side, the
    seed's classifier crops), so every pixel is seen; the rule of every script."""
    if size is not None and stride > size:
        raise UsageError(
            f"stride {stride} is larger than the window {size}: parts of the image would "
            "never be seen",
            option,
            f"use a stride ≤ {size_option}",
        )


def check_whole_image_size(crop: int | None, resize: int | None) -> None:
    """A classifier scores crops, or the whole image resized to ``resize``; with neither
    it would have no size to run at (the whole image at full size is not offered: its
    memory has no bound)."""
    if crop is None and resize is None:
        raise UsageError(
            "--crop none scores the whole image resized to --resize, and --resize is none",
            "--crop none --resize none",
            "give a size (--resize 512), or score crops at full resolution (--crop 512)",
        )


def _require(path: str | Path, what: str, option: str | None, folder: bool) -> Path:
    p = Path(path)
    where = f"{option} {p}" if option else p
    if not p.exists():
        raise UsageError(f"{what} not found", where)
    if p.is_dir() != folder:
        raise UsageError(f"{what} is not a {'folder' if folder else 'file'}", where)
    return p


def require_file(path: str | Path, what: str, option: str | None = None) -> Path:
    """An existing file, or a UsageError naming it (and the option that gave it)."""
    return _require(path, what, option, folder=False)


def require_dir(path: str | Path, what: str, option: str | None = None) -> Path:
    """An existing folder, or a UsageError naming it (and the option that gave it)."""
    return _require(path, what, option, folder=True)


def require_writable_dir(path: str | Path, option: str) -> Path:
    """A folder that exists and is writable, or can be created. Nothing is left behind
    here (a run that stops on a later user error must not leave half an output): the test
    is a temporary file in the nearest existing folder, removed at once, which also
    catches read-only mounts and permissions that ``os.access`` misreports for root."""
    if not str(path).strip():
        raise UsageError("an empty path is not an output folder", option)
    p = Path(path)
    probe = p
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"cannot create an output folder under a file ({probe})", f"{option} {p}")
    try:
        fd, name = tempfile.mkstemp(prefix=".mvss-write-test-", dir=probe)
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise UsageError(
            f"output folder cannot be created or written ({reason.lower()})", f"{option} {p}"
        ) from exc
    os.close(fd)
    os.unlink(name)
    return p


def setup_logging() -> None:
    """Log lines as plain messages (the scripts' progress and notes)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
