"""Where samples come from: list files, folder pairs, JSON lists, single images/globs.

Each source becomes a list of :class:`Record` plus a list of problems (bad rows,
ambiguous or orphan masks), never an exception for one bad entry.
"""

from __future__ import annotations

import codecs
import glob
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.core.user_errors import UsageError
from common.data.decode import IMAGE_EXTENSIONS, BadInputError, read_image, read_mask_raw

MASK_SUFFIXES = ("_gt", "_mask", "_groundtruth", "-gt", "-mask")
_NONE_MASKS = {"none", "null", "negative", "-", ""}
_TRAILING_COMMENT = re.compile(r"\s#")  # a comment after the columns: whitespace, then #


def read_user_text(path: Path) -> str:
    """A text file as users' editors save it: UTF-8 with or without the byte-order mark
    Windows tools write, or UTF-16 with its mark (PowerShell 5's ``>``). Undecodable
    bytes become U+FFFD, so the row holding them is reported rather than the file."""
    data = path.read_bytes()
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return data.decode("utf-16", errors="replace")
    return data.decode("utf-8-sig", errors="replace")


@dataclass(frozen=True)
class Record:
    """One sample: its image, optional mask/edge files and label (0 authentic; values
    above 1 are manipulation types, kept for per-type reporting; -1 unlabelled)."""

    image: str
    mask: str | None = None
    label: int = -1
    edge: str | None = None

    @property
    def manipulated(self) -> bool:
        return self.label > 0

    @property
    def binary_label(self) -> int:
        """1 manipulated (any type), 0 authentic, −1 unlabelled."""
        return self.label if self.label < 0 else int(self.label > 0)


@dataclass(frozen=True)
class Problem:
    """A source entry that could not be used, and why."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


def _resolve(path: str, base: Path, root: Path | None = None) -> str:
    """A list's path: absolute paths as they are; relative ones under ``root`` when a
    data root is given (the release's lists name paths from a dataset root), else beside
    the list first, then from the working directory."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return str(p)
    if root is not None:
        return str(root / p)
    beside = base / p
    return str(beside) if beside.exists() or not p.exists() else str(p)


def read_list_file(
    path: str | Path, root: str | Path | None = None
) -> tuple[list[Record], list[Problem]]:
    """The official list format: ``image mask label [edge]`` per line, whitespace separated.

    ``mask`` may be ``None`` (authentic); a single column is an unlabelled image. Relative
    paths resolve under ``root`` when given, else beside the list file first, then from
    the working directory. Blank lines, lines starting with ``#`` and a ``#`` comment
    after the columns are ignored; the file may be UTF-8 (with or without a byte-order
    mark) or UTF-16 (:func:`read_user_text`).
    """
    path = Path(path)
    base = path.parent
    root = None if root is None else Path(root).expanduser()
    records, problems = [], []
    for number, line in enumerate(read_user_text(path).splitlines(), start=1):
        text = _TRAILING_COMMENT.split(line, maxsplit=1)[0].strip()
        if not text or text.startswith("#"):
            continue
        cols = text.split()
        where = f"{path}:{number}"
        if len(cols) == 1:
            records.append(Record(_resolve(cols[0], base, root)))
            continue
        if len(cols) not in (3, 4):
            problems.append(
                Problem(where, f"expected 'image mask label [edge]', got {len(cols)} columns")
            )
            continue
        try:
            label = int(cols[2])
        except ValueError:
            problems.append(Problem(where, f"label {cols[2]!r} is not an integer"))
            continue
        if label < 0:
            problems.append(Problem(where, f"negative label {label}"))
            continue
        mask = None if cols[1].lower() in _NONE_MASKS else _resolve(cols[1], base, root)
        if label > 0 and mask is None:
            problems.append(Problem(where, f"label {label} (manipulated) but no mask"))
            continue
        edge = _resolve(cols[3], base, root) if len(cols) == 4 else None
        records.append(Record(_resolve(cols[0], base, root), mask, label, edge))
    return records, problems


def read_json_list(
    path: str | Path, root: str | Path | None = None
) -> tuple[list[Record], list[Problem]]:
    """IMDL-BenCo's JSON list: ``[[image, mask_or_"Negative"], ...]`` (relative paths as
    in :func:`read_list_file`)."""
    path = Path(path)
    root = None if root is None else Path(root).expanduser()
    try:
        rows = json.loads(read_user_text(path))
    except json.JSONDecodeError as exc:
        return [], [Problem(str(path), f"not valid JSON ({exc})")]
    if not isinstance(rows, list):
        return [], [Problem(str(path), "expected a JSON list of [image, mask] pairs")]
    records, problems = [], []
    for i, row in enumerate(rows):
        where = f"{path}[{i}]"
        if not (
            isinstance(row, list | tuple) and len(row) == 2 and all(isinstance(c, str) for c in row)
        ):
            problems.append(
                Problem(where, f"expected [image, mask_or_'Negative'], got {row!r}"[:200])
            )
            continue
        image, mask = row
        if mask.lower() in _NONE_MASKS:
            records.append(Record(_resolve(image, path.parent, root), None, 0))
        else:
            image_path, mask_path = (_resolve(x, path.parent, root) for x in (image, mask))
            records.append(Record(image_path, mask_path, 1))
    return records, problems


def _mask_stem(stem: str) -> str:
    for suffix in MASK_SUFFIXES:
        if stem.lower().endswith(suffix):
            return stem[: -len(suffix)]
    return stem


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def scan_folder_pair(root: str | Path) -> tuple[list[Record], list[Problem]]:
    """``root/images`` and ``root/masks`` matched by file stem, never by sorted order.

    Mask suffixes such as ``_gt`` or ``_mask`` are tolerated. Images without a mask are
    authentic. An image whose stem matches two masks, and a mask with no image, are
    reported as problems.
    """
    root = Path(root)
    image_dir, mask_dir = root / "images", root / "masks"
    images = _images_in(image_dir)
    image_stems = {i.stem for i in images}
    masks_by_stem: dict[str, list[Path]] = {}
    if mask_dir.is_dir():
        for m in _images_in(mask_dir):
            # an exact stem match wins; otherwise strip a tolerated suffix such as _gt
            key = m.stem if m.stem in image_stems else _mask_stem(m.stem)
            masks_by_stem.setdefault(key, []).append(m)
    records, problems = [], []
    for image in images:
        candidates = masks_by_stem.get(image.stem, [])
        if len(candidates) > 1:
            names = ", ".join(c.name for c in candidates)
            problems.append(Problem(str(image), f"ambiguous: several masks match ({names})"))
            continue
        if candidates:
            records.append(Record(str(image), str(candidates[0]), 1))
        else:
            records.append(Record(str(image), None, 0))
    for stem, found in masks_by_stem.items():
        if stem not in image_stems:
            for m in found:
                problems.append(Problem(str(m), "mask with no matching image"))
    return records, problems


def scan_images(paths: list[str]) -> tuple[list[Record], list[Problem]]:
    """Single image paths, folders of images (no masks) or glob patterns: unlabelled."""
    records, problems = [], []
    for spec in paths:
        p = Path(spec)
        if p.is_dir():
            records += [Record(str(i)) for i in _images_in(p)]
        elif p.is_file():
            records.append(Record(str(p)))
        else:
            matches = sorted(glob.glob(spec, recursive=True))
            if not matches:
                problems.append(Problem(spec, "no such file, folder or glob match"))
            records += [Record(m) for m in matches if Path(m).is_file()]
    return records, problems


def load_source(
    spec: str | Path | list[str], root: str | Path | None = None
) -> tuple[list[Record], list[Problem]]:
    """Any source: a ``.txt`` list, a ``.json`` list, a folder with ``images/`` (and
    ``masks/``), a folder of images, image paths or globs. ``root`` is the data root a
    list's relative paths resolve under (folders and globs name their files already).
    Rows naming files that do not exist are problems from the start, so "nothing usable"
    is known before any work."""
    records, problems = _load_any(spec, root)
    present = []
    for rec in records:
        missing = _missing_file(rec)
        if missing is None:
            present.append(rec)
        else:
            problems.append(Problem(rec.image, missing))
    return present, problems


NO_MATCH = "no such file, folder or glob match"
IMAGE_NOT_FOUND = "image file not found"


# A list whose first rows all miss under a data root is a wrong root, not bad rows.
ROOT_CHECK_ROWS = 5


def load_usable(
    spec: str | Path | list[str],
    where: str,
    noun: str = "images",
    root: str | Path | None = None,
    root_option: str = "--data-root",
) -> tuple[list[Record], list[Problem]]:
    """:func:`load_source`, and a :class:`UsageError` naming ``where`` (the option and
    value that gave the source) when a path does not exist or no row is usable: every
    script decides "an input set a job can start on" here. With a data ``root``: a
    missing root, or a list whose first rows do not resolve under it, is one line that
    shows a resolved path."""
    if root is not None and not Path(root).expanduser().is_dir():
        raise UsageError("data root not found (or not a folder)", f"{root_option} {root}")
    records, problems = load_source(spec, root)
    if root is not None:
        _check_root(records, problems, where, root, root_option)
    missing = [p for p in problems if p.reason == NO_MATCH]
    if missing:
        option = where.split(" ", 1)[0]
        named = where if "=" in where else f"{option} {missing[0].where}"  # a named set
        raise UsageError(NO_MATCH, named)
    if not records:
        what = f"no {noun}" if not problems else f"no usable rows ({len(problems)} bad)"
        first = f"first: {problems[0]}" if problems else "an empty list or folder"
        raise UsageError(what, where, first)
    return records, problems


def _check_root(
    records: list[Record],
    problems: list[Problem],
    where: str,
    root: str | Path,
    root_option: str,
) -> None:
    missing = [p for p in problems if p.reason == IMAGE_NOT_FOUND]
    total = len(records) + len(missing)
    wrong_root = not records or (
        len(missing) >= min(ROOT_CHECK_ROWS, total) and 2 * len(missing) > total
    )
    if not missing or not wrong_root:
        return  # most rows resolve: a few missing files, recorded as failures
    raise UsageError(
        f"the list's paths do not resolve under the data root ({len(missing)} of "
        f"{len(records) + len(missing)} images missing)",
        f"{where}, {root_option} {root}",
        f"e.g. {missing[0].where} does not exist",
    )


def require_one_readable(
    records: list[Record], where: str, decode: Callable[[int], object], noun: str = "images"
) -> None:
    """At least one record decodes with ``decode(index)`` (usually the first: one decode
    for a usable set), or a :class:`UsageError` with the first failure."""
    first_error = ""
    for index, rec in enumerate(records):
        try:
            decode(index)
            return
        except BadInputError as exc:
            first_error = first_error or f"{exc.path}: {exc.reason}"
        except (OSError, ValueError) as exc:
            first_error = first_error or f"{rec.image}: {getattr(exc, 'strerror', None) or exc}"
    raise UsageError(f"none of the {len(records)} {noun} can be read", where, first_error)


def decode_record(rec: Record) -> None:
    """Decode a record's image and mask (what an evaluation of it needs)."""
    read_image(rec.image)
    if rec.mask is not None and rec.label != 0:
        read_mask_raw(rec.mask)


def _missing_file(rec: Record) -> str | None:
    """Why a record cannot be used because a file it names is absent, or None."""
    if not Path(rec.image).is_file():
        return IMAGE_NOT_FOUND
    if rec.mask is not None and not Path(rec.mask).is_file():
        return f"mask file not found: {rec.mask}"
    if rec.edge is not None and not Path(rec.edge).is_file():
        return f"edge file not found: {rec.edge}"
    return None


def _load_any(
    spec: str | Path | list[str], root: str | Path | None = None
) -> tuple[list[Record], list[Problem]]:
    if isinstance(spec, list):
        if len(spec) == 1:
            return _load_any(spec[0], root)
        return scan_images(spec)
    p = Path(spec)
    if p.is_file() and p.suffix.lower() == ".json":
        return read_json_list(p, root)
    if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS:
        return scan_images([str(p)])
    if p.is_file():
        return read_list_file(p, root)
    if p.is_dir() and (p / "images").is_dir():
        return scan_folder_pair(p)
    return scan_images([str(spec)])
