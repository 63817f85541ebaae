"""Object outlines from a COCO ``instances_*.json``, for forgeries with real silhouettes.

DEFACTO and tampCOCO spliced, copied and removed COCO objects along their annotated
outlines; with these the generator does the same. A plain JSON reader is enough (the
polygons are lists of numbers), so pycocotools is not a dependency. Crowd annotations and
run-length-encoded masks are skipped (they mark groups, not single objects), and so are
objects too small to show at the synthetic image size.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np

from common.synth.photos import Photo


class CocoError(ValueError):
    """A file that is not a COCO instances annotation file."""


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file (what a resumed generation must have used too)."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


def read_objects(
    path: str | Path, min_area_fraction: float = 0.005
) -> dict[str, tuple[tuple[np.ndarray, ...], ...]]:
    """file_name → objects, each a tuple of (N, 2) float32 polygons in pixel coordinates.
    Objects smaller than ``min_area_fraction`` of their image are left out."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CocoError(f"{path}: not a readable JSON file ({exc})") from exc
    if not isinstance(data, dict) or not {"images", "annotations"} <= data.keys():
        raise CocoError(f"{path}: no 'images' and 'annotations' lists (not COCO instances)")
    if not isinstance(data["images"], list) or not isinstance(data["annotations"], list):
        raise CocoError(f"{path}: 'images' and 'annotations' must be lists")
    images = {}
    for im in data["images"]:
        try:
            images[int(im["id"])] = (str(im["file_name"]), float(im["width"]) * float(im["height"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise CocoError(f"{path}: image entry without id/file_name/width/height") from exc
    objects: dict[str, list[tuple[np.ndarray, ...]]] = {}
    for ann in data["annotations"]:
        if not isinstance(ann, dict):
            continue
        seg, image_id = ann.get("segmentation"), ann.get("image_id")
        if ann.get("iscrowd") or not isinstance(seg, list) or not isinstance(image_id, int):
            continue
        if image_id not in images:
            continue
        name, image_area = images[image_id]
        try:
            area = float(ann.get("area") or 0.0)
            parts = tuple(
                np.asarray(poly, np.float32).reshape(-1, 2)
                for poly in seg
                if isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0
            )
        except (TypeError, ValueError):  # a malformed annotation: left out
            continue
        if area >= min_area_fraction * image_area and parts:
            objects.setdefault(name, []).append(parts)
    return {name: tuple(objs) for name, objs in objects.items()}


def attach_objects(
    photos: Sequence[Photo], objects: dict[str, tuple[tuple[np.ndarray, ...], ...]]
) -> tuple[list[Photo], int]:
    """Photos with their outlines (matched by file name, then by relative path), and how
    many photos got at least one."""
    out, matched = [], 0
    for p in photos:
        found = objects.get(p.name) or objects.get(Path(p.name).name) or ()
        matched += bool(found)
        out.append(replace(p, objects=found) if found else p)
    return out, matched
