"""The commands in README.md and docs/*.md are real: each parses with its script's parser.

Every shell command in the Markdown code blocks that runs a script of this repository
(``python X.py …``, ``python -m pkg.mod …``, ``.venv/bin/python …``, ``torchrun … X.py …``
or ``torchrun … -m pkg.mod …``) is handed to that script's own entry point with
``argparse.ArgumentParser.parse_args`` patched to stop right after parsing: the script's
real parser (or the training config's) sees the documented options, and nothing runs. A
renamed or removed option fails here with the file, line and command. ``make`` targets
must exist in the Makefile, ``from … import …`` lines of Python blocks must resolve,
relative links (and their #anchors) must point at files and headings that exist, files and
modules named in the text must exist, and docs/architecture.md must describe every
subpackage of ``common/`` (the package is reorganised from time to time).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import logging
import re
import shlex
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from types import ModuleType
from unittest import mock

import pytest

ROOT = Path(__file__).resolve().parents[1]  # on the import path: pytest's pythonpath

DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console"}
PYTHONS = {"python", "python3", "python3.11", ".venv/bin/python"}
SEPARATORS = {"&&", "||", ";", "|"}
# packages of this repository: their modules are parsed, others only looked up
REPO_PACKAGES = {"common", "bench", "models"}
# an empty or broken extraction must fail, not pass vacuously
MIN_SCRIPT_COMMANDS = 40
MIN_SCRIPTS_COVERED = {
    "train_demo.py",
    "train_demo_nclass3.py",
    "train_demo_cls.py",
    "infer_mvss_calmetrics.py",
    "infer_3labels_merge_calmetrics.py",
    "infer_mvss_cls.py",
    "benchmark.py",
    "serve.py",
    "make_synthetic_data.py",
}


@dataclass(frozen=True)
class Command:
    doc: str  # file, relative to the repository
    line: int
    text: str
    kind: str  # "script", "module" or "make"
    target: str  # script path, module name, or make target
    argv: tuple[str, ...]

    def where(self) -> str:
        return f"{self.doc}:{self.line}: {' '.join(self.text.split())}"


# ----------------------------------------------------------------------------- extraction


def code_blocks(path: Path) -> Iterator[tuple[str, int, list[str]]]:
    """(language, line number of the first line, lines) of each fenced code block."""
    lang, start, lines = None, 0, []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        fence = re.match(r"^\s*```(\S*)", line)
        if fence and lang is None:
            lang, start, lines = fence.group(1).lower(), number + 1, []
        elif fence:
            yield lang, start, lines
            lang = None
        elif lang is not None:
            lines.append(line)


def logical_lines(start: int, lines: list[str]) -> Iterator[tuple[int, str]]:
    """Lines with backslash continuations joined, each with its first line's number."""
    buffer, first = "", start
    for offset, line in enumerate(lines):
        if not buffer:
            first = start + offset
        if line.rstrip().endswith("\\"):
            buffer += line.rstrip()[:-1] + " "
            continue
        yield first, (buffer + line).strip()
        buffer = ""
    if buffer:
        yield first, buffer.strip()


def split_commands(text: str) -> Iterator[list[str]]:
    """The simple commands of one shell line (split at && || ; |), comments dropped."""
    try:
        tokens = shlex.split(text, comments=True)
    except ValueError:
        return
    current: list[str] = []
    for token in tokens:
        if token in SEPARATORS:
            if current:
                yield current
            current = []
        else:
            current.append(token)
    if current:
        yield current


def _is_assignment(token: str) -> bool:
    return re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", token) is not None


def to_command(doc: str, line: int, text: str, tokens: list[str]) -> Command | None:
    if tokens and tokens[0] == "$":  # a console prompt
        tokens = tokens[1:]
    while tokens and _is_assignment(tokens[0]):  # OMP_NUM_THREADS=1 torchrun …
        tokens = tokens[1:]
    if not tokens:
        return None
    head, rest = tokens[0], tokens[1:]
    if head == "make":
        targets = [t for t in rest if not _is_assignment(t) and not t.startswith("-")]
        return Command(doc, line, text, "make", targets[0] if targets else "", ())
    if head in PYTHONS:
        if len(rest) >= 2 and rest[0] == "-m":
            return Command(doc, line, text, "module", rest[1], tuple(rest[2:]))
        if rest and rest[0].endswith(".py"):
            return Command(doc, line, text, "script", rest[0], tuple(rest[1:]))
        return None  # python -c …, or python alone
    if head == "torchrun":
        for i, token in enumerate(rest):
            if token == "-m" and i + 1 < len(rest):
                return Command(doc, line, text, "module", rest[i + 1], tuple(rest[i + 2 :]))
            if token.endswith(".py"):
                return Command(doc, line, text, "script", token, tuple(rest[i + 1 :]))
        raise AssertionError(f"{doc}:{line}: torchrun without a script: {text}")
    return None


def documented_commands() -> list[Command]:
    found = []
    for path in DOC_FILES:
        doc = str(path.relative_to(ROOT))
        for lang, start, lines in code_blocks(path):
            if lang not in SHELL_LANGUAGES:
                continue
            for number, text in logical_lines(start, lines):
                for tokens in split_commands(text):
                    command = to_command(doc, number, text, tokens)
                    if command is not None:
                        found.append(command)
    return found


COMMANDS = documented_commands()


# ----------------------------------------------------------------------------- parsing


class ParsedSignal(Exception):  # noqa: N818 (a signal, not an error)
    """Raised by the patched ``parse_args`` once the options are parsed."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        super().__init__("parsed")
        self.namespace = namespace


@contextmanager
def parse_only() -> Iterator[None]:
    """``ArgumentParser.parse_args`` parses, then stops the caller before any work (the
    root logger, which some entry points configure first, is left as it was)."""
    original = argparse.ArgumentParser.parse_args
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level

    def parse_args(self, args=None, namespace=None):  # type: ignore[no-untyped-def]
        raise ParsedSignal(original(self, args, namespace))

    try:
        with mock.patch.object(argparse.ArgumentParser, "parse_args", parse_args):
            yield
    finally:
        root.handlers[:] = handlers
        root.setLevel(level)


@cache
def load_script(relative: str) -> ModuleType:
    path = (ROOT / relative).resolve()
    name = "docs_script_" + re.sub(r"\W", "_", relative)
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None, f"cannot load {relative}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def entry_point(module: ModuleType):  # type: ignore[no-untyped-def]
    """The function that parses argv and raises user errors (``run``), else ``main``."""
    for name in ("run", "main"):
        if callable(getattr(module, name, None)):
            return getattr(module, name)
    raise AssertionError(f"{module.__name__} has no run(argv) or main(argv)")


def parse_problem(command: Command) -> str | None:
    """None when the command's options parse with its script's parser, else why not."""
    if any("$" in a for a in command.argv) or any(a[:1] in "<[" for a in command.argv if a):
        return "uses a shell variable or a placeholder: write a concrete example"
    try:
        if command.kind == "script":
            if not (ROOT / command.target).is_file():
                return f"no script {command.target}"
            module = load_script(command.target)
        else:
            if command.target.split(".")[0] not in REPO_PACKAGES:
                found = importlib.util.find_spec(command.target.split(".")[0]) is not None
                return None if found else f"no module {command.target}"
            if importlib.util.find_spec(command.target) is None:
                return f"no module {command.target}"
            module = importlib.import_module(command.target)
    except ImportError as exc:
        return f"cannot import it: {type(exc).__name__}: {exc}"
    try:
        with parse_only():
            entry_point(module)(list(command.argv))
    except ParsedSignal:
        return None
    except SystemExit as exc:  # a plain argparse error (unknown option, bad value)
        return f"argparse exited ({exc.code})"
    except Exception as exc:  # the scripts' parsers raise UsageError instead of exiting
        return f"{type(exc).__name__}: {exc}"
    return "the entry point returned without parsing its options"


# ----------------------------------------------------------------------------- tests


def test_enough_commands_found() -> None:
    scripts = [c for c in COMMANDS if c.kind == "script"]
    assert len(scripts) >= MIN_SCRIPT_COMMANDS, (
        f"only {len(scripts)} script commands found in README.md and docs/*.md"
    )
    covered = {Path(c.target).name for c in scripts}
    assert covered >= MIN_SCRIPTS_COVERED, (
        f"no documented command for {MIN_SCRIPTS_COVERED - covered}"
    )
    assert any(c.kind == "module" for c in COMMANDS), "no python -m command found"
    assert any(c.kind == "make" for c in COMMANDS), "no make command found"


def test_commands_parse_with_their_scripts_parsers() -> None:
    problems = [
        f"{c.where()}\n    → {why}"
        for c in COMMANDS
        if c.kind in ("script", "module")
        for why in [parse_problem(c)]
        if why
    ]
    assert not problems, "documented commands that do not parse:\n" + "\n".join(problems)


def test_an_unknown_option_is_caught() -> None:
    """The check itself: an option the script does not have is reported."""
    for script, argv in [
        (
            "infer_mvss_calmetrics.py",
            ["--model_path", "m.pt", "--test_file", "t.txt", "--thx", "1"],
        ),
        ("train_demo.py", ["--train_list", "t.txt", "--learning_rate", "0.1"]),
        ("make_synthetic_data.py", ["--out", "x", "--trian", "5"]),
    ]:
        command = Command("(test)", 0, " ".join(argv), "script", script, tuple(argv))
        assert parse_problem(command), f"{script} accepted an unknown option"


def test_make_targets_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    targets = set(re.findall(r"^([A-Za-z][\w-]*):", makefile, flags=re.MULTILINE))
    missing = [c.where() for c in COMMANDS if c.kind == "make" and c.target not in targets]
    assert not missing, "make targets not in the Makefile:\n" + "\n".join(missing)


def _python_imports() -> Iterator[tuple[str, str, list[str]]]:
    import ast

    for path in DOC_FILES:
        for lang, start, lines in code_blocks(path):
            if lang != "python":
                continue
            for node in ast.walk(ast.parse("\n".join(lines))):
                if isinstance(node, ast.ImportFrom) and node.module:
                    where = f"{path.relative_to(ROOT)}:{start + node.lineno - 1}"
                    yield where, node.module, [a.name for a in node.names]


def test_python_examples_import_what_exists() -> None:
    problems = []
    for where, module_name, names in _python_imports():
        if module_name.split(".")[0] not in REPO_PACKAGES:
            continue
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            problems.append(f"{where}: {module_name}: {exc}")
            continue
        problems += [f"{where}: {module_name} has no {n}" for n in names if not hasattr(module, n)]
    assert not problems, "\n".join(problems)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower().replace("`", "")
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    inside, anchors = False, set()
    for line in path.read_text().splitlines():
        if line.lstrip().startswith("```"):
            inside = not inside
        elif not inside and (m := re.match(r"^#{1,6}\s+(.*)$", line)):
            anchors.add(_slug(m.group(1)))
    return anchors


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path: Path) -> None:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    problems = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+:", target):  # http:, https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if ROOT not in linked.parents and linked != ROOT:
            problems.append(f"{target}: outside the repository")
        elif not linked.exists():
            problems.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in _anchors(linked):
            problems.append(f"{target}: no heading #{anchor} in {linked.name}")
    assert not problems, f"{path.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_architecture_page_names_every_subpackage() -> None:
    """docs/architecture.md describes the package layout that exists."""
    page = (ROOT / "docs" / "architecture.md").read_text()
    packages = sorted(p.name for p in (ROOT / "common").iterdir() if (p / "__init__.py").is_file())
    missing = [p for p in packages if f"`common/{p}/`" not in page]
    assert not missing, f"docs/architecture.md does not describe common/{missing}"
    gone = sorted(set(re.findall(r"`common/(\w+)/`", page)) - set(packages))
    assert not gone, f"docs/architecture.md describes missing packages common/{gone}"


def test_named_files_and_modules_exist() -> None:
    """Paths like `common/data/masks.py` and modules like `common.core.usage` in the text
    exist (the package is reorganised from time to time: the pages must follow)."""
    problems = []
    for path in DOC_FILES:
        text = path.read_text()
        for name in set(
            re.findall(r"`((?:common|models|tests|bench|configs|web)/[\w./-]*)`", text)
        ):
            if not (ROOT / name).exists():
                problems.append(f"{path.relative_to(ROOT)}: no file {name}")
        for name in set(re.findall(r"\b(common(?:\.\w+)+)", text)):
            module = ".".join(name.split(".")[:3])
            if importlib.util.find_spec(module) is None:
                problems.append(f"{path.relative_to(ROOT)}: no module {module}")
    assert not problems, "\n".join(sorted(problems))
