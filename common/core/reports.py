"""Writing results people read: per-image CSV (as it goes), summary JSON, tables, overlays."""

from __future__ import annotations

import csv
import json
import math
import os
import zlib
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO

import cv2
import numpy as np

# Exit status of the batch scripts when some images could not be processed.
EXIT_SOME_FAILED = 3

# The seed's colours (BGR) for class maps: white pristine, red tampered, blue desensitised.
CLASS_COLOURS_BGR = np.array([[255, 255, 255], [0, 0, 255], [255, 0, 0]], np.uint8)


def unique_names(paths: Sequence[str]) -> list[str]:
    """Output names from image stems; stems that collide get a short hash of their path."""
    stems = [Path(p).stem for p in paths]
    counts: dict[str, int] = {}
    for s in stems:
        counts[s] = counts.get(s, 0) + 1
    return [
        s if counts[s] == 1 else f"{s}_{zlib.crc32(p.encode()):08x}"
        for s, p in zip(stems, paths, strict=True)
    ]


class CsvLog:
    """A CSV written row by row and flushed, so an interrupted run keeps what it did."""

    def __init__(self, path: Path, fields: Sequence[str], append: bool = False) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        exists = append and path.exists() and path.stat().st_size > 0
        header = _match_header(path, fields) if exists else list(fields)
        self._fh: TextIO = open(path, "a" if exists else "w", newline="")  # noqa: SIM115
        self._writer = csv.DictWriter(self._fh, fieldnames=header, extrasaction="ignore")
        if not exists:
            self._writer.writeheader()
        self.path = path

    def write(self, row: dict[str, Any]) -> None:
        self._writer.writerow({k: _fmt(v) for k, v in row.items()})
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> CsvLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _match_header(path: Path, fields: Sequence[str]) -> list[str]:
    """The header to append under: ``fields``, then any column of the file's own that
    ``fields`` lacks (a run resumed by a version, or with settings, that log other
    columns keeps the history of both). Where that differs from the file's header, the
    file is rewritten under it first, its rows by column name."""
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        own = list(reader.fieldnames or [])
        header = [*fields, *(k for k in own if k not in fields)]
        if own == header:
            return header
        rows = list(reader)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)
    tmp.replace(path)
    return header


def _fmt(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6f}"
    return "" if value is None else value


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomic JSON write (temp file + rename)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_jsonable(data), indent=2))
    os.replace(tmp, path)


def format_table(metrics: dict[str, Any], keys: Iterable[str] | None = None) -> str:
    """Two-column text table of scalar metrics (undefined values shown as n/a)."""
    keys = (
        list(keys)
        if keys is not None
        else [k for k, v in metrics.items() if isinstance(v, int | float) or v is None]
    )
    width = max((len(k) for k in keys), default=10)
    lines = [f"{'metric'.ljust(width)}  value", f"{'-' * width}  ------"]
    for k in keys:
        v = metrics.get(k)
        text = "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)
        lines.append(f"{k.ljust(width)}  {text}")
    for note in metrics.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)


def overlay(image_bgr: np.ndarray, prob: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The probability map as a heat map blended over the image (for people to look at)."""
    heat = cv2.applyColorMap(np.floor(np.clip(prob, 0, 1) * 255).astype(np.uint8), cv2.COLORMAP_JET)
    weight = (alpha * np.clip(prob, 0, 1))[..., None]
    return (image_bgr * (1 - weight) + heat * weight).astype(np.uint8)


def colour_classes(index_map: np.ndarray) -> np.ndarray:
    """Class-index map → the seed's colour image (BGR)."""
    return CLASS_COLOURS_BGR[np.clip(index_map, 0, 2)]
