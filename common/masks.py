"""Ground-truth masks: binary and three-class decoding, and edge masks from contours.

Three-class masks (0 pristine, 1 tampered, 2 desensitised) are accepted as
- index PNGs with values {0, 1, 2};
- grey PNGs with values {0, 255, 128} (0 pristine, 255 tampered, 128 desensitised);
- the seed's colour masks (``gt3_*.png``): white background, red tampered, blue
  desensitised (luma 255 / 76 / 29); black also reads as background.
Each pixel takes the nearest palette entry, so JPEG-noisy masks still decode.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from common.io import BadInputError, read_mask_raw

DEFAULT_MASK_THRESHOLD = 127
DEFAULT_EDGE_THICKNESS = 3
MASK_SIZE_POLICIES = ("resize", "reject")

# BGR colours of the seed's colour convention → class.
_COLOUR_PALETTE = np.array([[255, 255, 255], [0, 0, 0], [0, 0, 255], [255, 0, 0]], dtype=np.float32)
_COLOUR_CLASSES = np.array([0, 0, 1, 2], dtype=np.uint8)
_GREY_PALETTE = np.array([0, 255, 128], dtype=np.float32)  # classes 0, 1, 2


def binary_from_raw(raw: np.ndarray, threshold: int = DEFAULT_MASK_THRESHOLD) -> np.ndarray:
    """Binary mask (bool) from a decoded mask: grey (luma for colour) > threshold.

    ``threshold=0`` reproduces the release, where every non-zero pixel is tampered.
    """
    grey = raw if raw.ndim == 2 else cv2.cvtColor(raw, cv2.COLOR_BGR2GRAY)
    return grey > threshold


def three_class_from_raw(raw: np.ndarray) -> np.ndarray:
    """Class-index mask (uint8 in {0, 1, 2}) from any of the three documented encodings."""
    if raw.ndim == 3:
        pixels = raw.reshape(-1, 1, 3).astype(np.float32)
        dist = ((pixels - _COLOUR_PALETTE[None]) ** 2).sum(-1)
        return _COLOUR_CLASSES[dist.argmin(1)].reshape(raw.shape[:2])
    if raw.max() <= 2:
        return raw.astype(np.uint8)
    dist = np.abs(raw.astype(np.float32)[..., None] - _GREY_PALETTE)
    return dist.argmin(-1).astype(np.uint8)


def read_mask(
    path: str | Path,
    image_shape: tuple[int, int],
    nclass: int = 1,
    threshold: int = DEFAULT_MASK_THRESHOLD,
    size_policy: str = "resize",
) -> tuple[np.ndarray, str | None]:
    """Read a mask for an image of ``image_shape`` (H, W).

    Returns the mask (uint8: {0, 1} for ``nclass=1``, {0, 1, 2} for ``nclass=3``) and a
    warning string when it had to be resized, else None. ``size_policy="reject"`` raises
    instead of resizing a mask whose size differs from the image.
    """
    if size_policy not in MASK_SIZE_POLICIES:
        raise ValueError(f"size_policy must be one of {MASK_SIZE_POLICIES}, got {size_policy!r}")
    raw = read_mask_raw(path)
    if nclass == 1:
        if raw.ndim == 3 or raw.max() > 2:
            mask = binary_from_raw(raw, threshold).astype(np.uint8)
        else:  # an index mask {0, 1, 2}: any manipulated class counts
            mask = (raw > 0).astype(np.uint8)
    else:
        mask = three_class_from_raw(raw)
    warning = None
    if mask.shape[:2] != tuple(image_shape):
        got = f"{mask.shape[1]}×{mask.shape[0]}"
        want = f"{image_shape[1]}×{image_shape[0]}"
        if size_policy == "reject":
            raise BadInputError(path, f"mask is {got} but its image is {want}")
        mask = cv2.resize(mask, (image_shape[1], image_shape[0]), interpolation=cv2.INTER_NEAREST)
        warning = f"{path}: mask {got} resized (nearest) to the image's {want}"
    return mask, warning


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
