"""YAML configs with command-line overrides.

Every key of a script's default config becomes an option ``--key value`` (also
``--key-with-dashes``); ``--config FILE`` layers a YAML file over the defaults, and the
command line wins over both. Unknown keys answer with the closest valid names. The
resolved config is plain data (saved as YAML beside the run, and inside checkpoints).
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from common.core.user_errors import Parser, UsageError


class ConfigError(UsageError):
    """A config file or option that cannot be used (a user error: one line, exit 2)."""


def _closest(key: str, valid: Sequence[str]) -> str:
    near = difflib.get_close_matches(key, valid, n=3)
    return f" (did you mean {', '.join(near)}?)" if near else ""


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError("config file not found", f"--config {path}") from exc
    except IsADirectoryError as exc:
        raise ConfigError("config is a folder, not a YAML file", f"--config {path}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError("config is not a text (YAML) file", f"--config {path}") from exc
    except OSError as exc:
        reason = (exc.strerror or type(exc).__name__).lower()
        raise ConfigError(f"cannot read the config ({reason})", f"--config {path}") from exc
    except yaml.YAMLError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "syntax error"
        raise ConfigError(f"not valid YAML: {first}", f"--config {path}") from exc
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of option: value", f"--config {path}")
    return data


def merge(defaults: Mapping[str, Any], override: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Defaults updated by ``override``; unknown keys are errors naming close matches."""
    out = dict(defaults)
    for key, value in override.items():
        norm = key.replace("-", "_")
        if norm not in defaults:
            raise ConfigError(f"unknown option {key!r}{_closest(norm, list(defaults))}", where)
        out[norm] = value
    return out


def _parse_value(text: str, default: Any) -> Any:
    """Parse a command-line value by its default's type (YAML syntax for the rest)."""
    if isinstance(default, bool):
        low = text.lower()
        if low in ("1", "true", "yes", "on"):
            return True
        if low in ("0", "false", "no", "off"):
            return False
        raise argparse.ArgumentTypeError(f"expected true/false, got {text!r}")
    if isinstance(default, int) and not isinstance(default, bool):
        try:
            return int(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from exc
    if isinstance(default, float):
        try:
            return float(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from exc
    if isinstance(default, str):
        return text
    value = yaml.safe_load(text)  # lists, null, or strings for options whose default is null
    if default is None and isinstance(value, int | float) and not isinstance(value, bool):
        return value
    return value


class _Parser(Parser):
    """A :class:`~common.core.user_errors.Parser` whose unknown-option errors suggest the closest
    names."""

    valid: list[str]

    def error(self, message: str) -> None:  # type: ignore[override]
        if "unrecognized arguments" in message:
            bad = message.split(":", 1)[1].split()
            first = next((b for b in bad if b.startswith("--")), "")
            raise UsageError(f"unknown option {first or bad[0]}{_closest(first, self.valid)}")
        super().error(message)


def parse_config(
    defaults: Mapping[str, Any],
    description: str,
    argv: Sequence[str] | None = None,
    comments: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Resolve defaults ← ``--config`` YAML ← command-line options."""
    parser = _Parser(description=description, allow_abbrev=False)
    parser.valid = [f"--{k}" for k in defaults]
    parser.add_argument("--config", help="YAML file of options (command line wins)")
    for key, default in defaults.items():
        names = [f"--{key}"]
        if "_" in key:
            names.append(f"--{key.replace('_', '-')}")
        parser.add_argument(
            *names,
            dest=key,
            default=argparse.SUPPRESS,
            type=lambda text, d=default: _parse_value(text, d),
            help=f"{(comments or {}).get(key, '')} (default: {default!r})",
        )
    args = vars(parser.parse_args(argv))
    config_file = args.pop("config", None)
    resolved = dict(defaults)
    if config_file:
        resolved = merge(resolved, load_yaml(config_file), f"--config {config_file}")
    return merge(resolved, args, "command line")


BASE_KEY = "base"


def read_defaults(path: str | Path) -> tuple[dict[str, Any], dict[str, str]]:
    """A script's documented default config: values, and each key's trailing comment.

    ``base: FILE`` (relative to this file) layers this file over another one, so the
    three training scripts keep their shared options in one file and only what
    differs in their own."""
    path = Path(path)
    own = load_yaml(path)
    own_comments: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if ":" in line and "#" in line and not line.lstrip().startswith("#"):
            key = line.split(":", 1)[0].strip()
            own_comments[key] = line.split("#", 1)[1].strip()
    base = own.pop(BASE_KEY, None)
    own_comments.pop(BASE_KEY, None)
    if base is None:
        return own, own_comments
    values, comments = read_defaults(path.parent / str(base))
    return {**values, **own}, {**comments, **own_comments}


def save_yaml(path: str | Path, config: Mapping[str, Any]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(dict(config), sort_keys=False))
