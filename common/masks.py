"""Ground-truth masks: what a mask file means, decided once for every reader.

Every reader (training datasets, inference evaluation, ``--pred-dir``, baselines,
classifier labels) goes through :func:`read_classes`, which decodes a file into class
indices (0 pristine, 1 tampered, 2 desensitised) by looking at its content:

- **colour**: a 3-channel mask with any chromatic pixel (channel spread > 64) is the
  seed's palette (``gt3_*.png``): achromatic pixels (white or black) are background,
  red-dominant pixels tampered, blue-dominant pixels desensitised; green-dominant pixels
  are not part of the palette and are refused with the file named;
- **index**: grey values all in {0, 1, 2} are class indices;
- **seed luma**: grey values all in {29, 76, 255} (the seed's colour masks saved as
  8-bit grey: blue 29, red 76, white 255) are read as that palette;
- **grey**: anything else is thresholded: value > ``threshold`` (default 127) is
  manipulated; for three classes a manipulated value below 192 is desensitised (the
  {0, 128, 255} convention) and 192 and above is tampered.

A 3-channel mask without chromatic pixels (a white-on-black mask saved as RGB or JPEG)
is read as grey (its luma). Binary tasks use ``classes > 0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from common.io import BadInputError, read_mask_raw

DEFAULT_MASK_THRESHOLD = 127
DEFAULT_EDGE_THICKNESS = 3
MASK_SIZE_POLICIES = ("resize", "reject")
MASK_ENCODINGS = ("colour", "index", "seed-luma", "grey")

# A pixel whose largest and smallest channel differ by more than this is coloured.
# JPEG chroma noise on white, black or grey stays far below it.
_CHROMA_SPREAD = 64
# Grey three-level masks: manipulated values at or above this are tampered (255), below
# it desensitised (128).
_GREY_TAMPERED_FROM = 192
_SEED_LUMA = {255: 0, 76: 1, 29: 2}


@dataclass(frozen=True)
class MaskOptions:
    """How masks are read: classes, grey threshold, edge width, size policy."""

    nclass: int = 1
    threshold: int = DEFAULT_MASK_THRESHOLD
    edge_thickness: int = DEFAULT_EDGE_THICKNESS
    size_policy: str = "resize"  # or "reject"


def _is_chromatic(raw: np.ndarray) -> np.ndarray:
    spread = raw.max(axis=2).astype(np.int16) - raw.min(axis=2).astype(np.int16)
    return spread > _CHROMA_SPREAD


def _grey_of(raw: np.ndarray) -> np.ndarray:
    return raw if raw.ndim == 2 else cv2.cvtColor(raw, cv2.COLOR_BGR2GRAY)


def mask_encoding(raw: np.ndarray) -> str:
    """Which of :data:`MASK_ENCODINGS` a decoded mask (H×W or H×W×3 BGR uint8) uses."""
    if raw.ndim == 3 and _is_chromatic(raw).any():
        return "colour"
    counts = np.bincount(_grey_of(raw).ravel(), minlength=256)
    present = set(np.flatnonzero(counts).tolist())
    if present <= {0, 1, 2}:
        return "index"
    if present <= set(_SEED_LUMA) and present & {29, 76}:
        return "seed-luma"
    return "grey"


def _colour_classes(raw: np.ndarray, where: str) -> np.ndarray:
    chromatic = _is_chromatic(raw)
    dominant = raw.argmax(axis=2)  # 0 blue, 1 green, 2 red (BGR)
    greenish = chromatic & (dominant == 1)
    if greenish.any():
        y, x = np.argwhere(greenish)[0]
        b, g, r = raw[y, x].tolist()
        raise BadInputError(
            where,
            f"colour mask has a pixel outside the palette at (x={x}, y={y}): BGR ({b}, {g}, "
            f"{r}); expected white or black background, red = tampered, blue = desensitised",
        )
    classes = np.zeros(raw.shape[:2], np.uint8)
    classes[chromatic & (dominant == 2)] = 1
    classes[chromatic & (dominant == 0)] = 2
    return classes


def decode_classes(
    raw: np.ndarray, threshold: int = DEFAULT_MASK_THRESHOLD, where: str = "mask"
) -> np.ndarray:
    """Class indices (uint8 in {0, 1, 2}) of a decoded mask, by its encoding (see the
    module docstring). ``where`` names the file in errors."""
    encoding = mask_encoding(raw)
    if encoding == "colour":
        return _colour_classes(raw, where)
    grey = _grey_of(raw)
    if encoding == "index":
        return grey.astype(np.uint8, copy=True)
    if encoding == "seed-luma":
        lut = np.zeros(256, np.uint8)
        for value, cls in _SEED_LUMA.items():
            lut[value] = cls
        return lut[grey]
    manipulated = grey > threshold
    return np.where(manipulated, np.where(grey >= _GREY_TAMPERED_FROM, 1, 2), 0).astype(np.uint8)


def binary_from_classes(classes: np.ndarray) -> np.ndarray:
    """Binary mask (uint8 {0, 1}) of a class mask: every manipulated class counts."""
    return (classes > 0).astype(np.uint8)


@dataclass(frozen=True)
class SampleLabels:
    """A training sample's labels as its (transformed) mask shows them."""

    label: int  # 1 manipulated, 0 authentic, −1 unlabelled
    image_class: int  # 0 authentic, 1 tampered, 2 desensitised only (−1 unlabelled)
    cleared: bool  # a region smaller than min_region_pixels was dropped from the mask


def sample_labels(
    classes: np.ndarray, record_label: int, from_content: bool, min_region_pixels: int = 1
) -> SampleLabels:
    """Labels of a sample whose class mask is ``classes``.

    ``from_content=True`` (training): the sample is manipulated when at least
    ``min_region_pixels`` of its mask pixels are (counted after crop/resize, at the
    training size), whatever the list says, so a crop that misses the region, or a resize
    that makes it vanish, trains as authentic. A region smaller than that but not empty is
    dropped (``cleared``), so the sample is consistently authentic. ``from_content=False``
    keeps ``record_label`` (the image-level ground truth of evaluation).
    """
    cleared = False
    label = record_label
    if from_content and record_label >= 0:
        count = int(np.count_nonzero(classes))
        label = int(count >= min_region_pixels)
        cleared = 0 < count < min_region_pixels
    if label <= 0:
        image_class = label
    elif (classes == 1).any() or not (classes == 2).any():
        image_class = 1
    else:
        image_class = 2
    return SampleLabels(label, image_class, cleared)


def read_classes(
    path: str | Path,
    image_shape: tuple[int, int],
    threshold: int = DEFAULT_MASK_THRESHOLD,
    size_policy: str = "resize",
) -> tuple[np.ndarray, str | None]:
    """Class mask (uint8 {0, 1, 2}) of ``path`` for an image of ``image_shape`` (H, W).

    Returns the mask and a warning string when it had to be resized (nearest), else
    None. ``size_policy="reject"`` raises instead of resizing.
    """
    if size_policy not in MASK_SIZE_POLICIES:
        raise ValueError(f"size_policy must be one of {MASK_SIZE_POLICIES}, got {size_policy!r}")
    classes = decode_classes(read_mask_raw(path), threshold, str(path))
    warning = None
    if classes.shape[:2] != tuple(image_shape):
        got = f"{classes.shape[1]}×{classes.shape[0]}"
        want = f"{image_shape[1]}×{image_shape[0]}"
        if size_policy == "reject":
            raise BadInputError(path, f"mask is {got} but its image is {want}")
        classes = cv2.resize(
            classes, (image_shape[1], image_shape[0]), interpolation=cv2.INTER_NEAREST
        )
        warning = f"{path}: mask {got} resized (nearest) to the image's {want}"
    return classes, warning


def read_mask(
    path: str | Path,
    image_shape: tuple[int, int],
    nclass: int = 1,
    threshold: int = DEFAULT_MASK_THRESHOLD,
    size_policy: str = "resize",
) -> tuple[np.ndarray, str | None]:
    """A mask for a task: {0, 1} for ``nclass=1``, {0, 1, 2} for ``nclass=3``; plus the
    resize warning of :func:`read_classes`."""
    classes, warning = read_classes(path, image_shape, threshold, size_policy)
    return (binary_from_classes(classes) if nclass == 1 else classes), warning


def edge_map_size(height: int, width: int) -> tuple[int, int]:
    """Size of the network's edge output (c1, after two ceil-halvings) for an input size."""
    return (height + 3) // 4, (width + 3) // 4


def edge_from_mask(
    mask: np.ndarray, out_size: tuple[int, int], thickness: int = DEFAULT_EDGE_THICKNESS
) -> np.ndarray:
    """Edge target: contours of the manipulated region drawn ``thickness`` px wide at the
    mask's resolution, then reduced to ``out_size`` (H, W) and binarised (any coverage).
    """
    binary = (mask > 0).astype(np.uint8)
    canvas = np.zeros_like(binary)
    if binary.any():
        contours, _ = cv2.findContours(binary, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, 1, thickness)
    return reduce_binary(canvas, out_size)


def reduce_binary(mask: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """A binary map reduced to ``out_size`` (H, W) by area and re-binarised (any
    coverage counts, so thin edges survive the reduction)."""
    if mask.shape != tuple(out_size):
        mask = cv2.resize(
            (mask > 0).astype(np.float32), (out_size[1], out_size[0]), interpolation=cv2.INTER_AREA
        )
    return (mask > 0).astype(np.uint8)
