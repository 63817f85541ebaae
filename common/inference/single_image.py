"""Single-image prediction, resize policy and tiling (the API the scripts use).

``predict`` follows the release's pipeline: resize to 512×512 (bilinear), normalise,
sigmoid, resize the map back to the original size. ``resize=None`` runs at full
resolution in overlapping tiles whose probabilities are blended, so memory stays bounded
for any image size.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from common.core.release import MAP_LEVELS, RELEASE_SIZE, TILE_STRIDE
from common.core.runtime import autocast, to_memory_format
from common.core.scores import manipulated_probability, probabilities
from common.data.decode import read_image, to_uint8
from common.data.transforms import MIN_SIDE, normalize_bgr_batch, upsample_to_min_side
from models.outputs import ModelOutput, cast_output


@dataclass
class RunOptions:
    """How the model is run: device, mixed precision, memory format, tiling."""

    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    amp: str = "off"
    channels_last: bool = False
    tile: int = RELEASE_SIZE
    tile_stride: int = TILE_STRIDE
    tile_batch: int = 4
    blend: str = "weighted"  # "weighted" (ramped seams) or "average" (the seed's)


def tile_blend(nclass: int) -> str:
    """How a model's overlapping tiles are blended: three-class maps are averaged, as
    the seed scripts do (the three-class script, the benchmark, the web app and the
    binary script scoring its merged map then write the same map); binary maps are
    weighted toward each tile's centre, so seams do not show."""
    return "average" if nclass == 3 else "weighted"


@torch.inference_mode()
def run_model(model: nn.Module, x: torch.Tensor, opts: RunOptions) -> ModelOutput:
    """A normalised batch (N, 3, H, W) through any of our networks (plain, ``--fast``,
    classifier) as ``opts`` says: device, memory format, mixed precision. The one place
    inference calls a model; outputs come back in fp32, on the model's device."""
    x = to_memory_format(x.to(opts.device, non_blocking=True), opts.channels_last)
    with autocast(opts.device, opts.amp):
        out = model(x)
    return cast_output(out, torch.float32)


def forward_probs(model: nn.Module, images: torch.Tensor, opts: RunOptions) -> torch.Tensor:
    """uint8 BGR batch (N, H, W, 3) → probabilities (N, C, H, W) float32 on the CPU."""
    x = normalize_bgr_batch(images.to(opts.device, non_blocking=True))
    return probabilities(run_model(model, x, opts).seg).cpu()


def resize_map(prob: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a (C, h, w) or (h, w) float map to (H, W) bilinearly (the release's way)."""
    h, w = size
    if prob.shape[-2:] == (h, w):
        return prob
    if prob.ndim == 2:
        return cv2.resize(prob, (w, h), interpolation=cv2.INTER_LINEAR)
    resized = cv2.resize(
        np.ascontiguousarray(prob.transpose(1, 2, 0)), (w, h), interpolation=cv2.INTER_LINEAR
    )
    return resized.reshape(h, w, -1).transpose(2, 0, 1)


def resize_input(image: np.ndarray, resize: int | None) -> np.ndarray:
    """The network input: ``resize``×``resize`` (bilinear) or the image itself."""
    if resize is None:
        return upsample_to_min_side(image)
    if resize < MIN_SIDE:
        raise ValueError(f"resize must be ≥ {MIN_SIDE}, got {resize}")
    return cv2.resize(image, (resize, resize), interpolation=cv2.INTER_LINEAR)


def tile_windows(
    height: int, width: int, tile: int, stride: int
) -> list[tuple[int, int, int, int]]:
    """Windows (y0, x0, y1, x1) of at most ``tile`` covering the image; the last row and
    column of windows are aligned with the far edges."""
    if stride <= 0 or stride > tile:
        raise ValueError(f"tile stride must be in 1..tile ({tile}), got {stride}")

    def starts(size: int) -> list[int]:
        if size <= tile:
            return [0]
        out = list(range(0, size - tile, stride))
        return [*out, size - tile]

    th, tw = min(tile, height), min(tile, width)
    return [(y, x, y + th, x + tw) for y in starts(height) for x in starts(width)]


def _blend_weights(h: int, w: int, blend: str) -> np.ndarray:
    if blend == "average":
        return np.ones((h, w), np.float32)

    def ramp(n: int) -> np.ndarray:
        r = np.minimum(np.arange(n) + 1, np.arange(n)[::-1] + 1).astype(np.float32)
        return np.minimum(r / max(1.0, n / 4), 1.0)

    return np.outer(ramp(h), ramp(w))


def predict_tiled(
    model: nn.Module,
    image: np.ndarray,
    opts: RunOptions,
    on_tiles: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Full-resolution probabilities (C, H, W) from overlapping tiles, blended.
    ``on_tiles(done, total)`` is called after each group of tiles (progress; it may raise
    to abandon the image)."""
    original = image.shape[:2]
    image = upsample_to_min_side(image)
    h, w = image.shape[:2]
    windows = tile_windows(h, w, opts.tile, opts.tile_stride)
    acc: np.ndarray | None = None
    weight_sum = np.zeros((h, w), np.float32)
    for start in range(0, len(windows), opts.tile_batch):
        group = windows[start : start + opts.tile_batch]
        crops = torch.from_numpy(np.stack([image[y0:y1, x0:x1] for y0, x0, y1, x1 in group]))
        probs = forward_probs(model, crops, opts).numpy()
        if acc is None:
            acc = np.zeros((probs.shape[1], h, w), np.float32)
        for (y0, x0, y1, x1), p in zip(group, probs, strict=True):
            wts = _blend_weights(y1 - y0, x1 - x0, opts.blend)
            acc[:, y0:y1, x0:x1] += p * wts
            weight_sum[y0:y1, x0:x1] += wts
        if on_tiles is not None:
            on_tiles(min(start + opts.tile_batch, len(windows)), len(windows))
    assert acc is not None
    return resize_map(acc / weight_sum, original)


def manipulated_map(probs: np.ndarray, desensitised: str = "positive") -> np.ndarray:
    """(H, W) probability of 'manipulated': the map itself, or 1 − P(pristine); for a
    three-class model evaluated with desensitised regions not manipulated
    (``negative``/``ignore``), P(tampered) (:func:`manipulated_probability`)."""
    return manipulated_probability(probs, 0, desensitised)


def predict(
    model: nn.Module,
    image_bgr: np.ndarray | str | Path,
    resize: int | None = RELEASE_SIZE,
    opts: RunOptions | None = None,
) -> tuple[np.ndarray, float]:
    """``(8-bit map uint8 H×W at the original size, image score)``, exactly what the
    inference scripts write and report for this image: the map as the release writes
    it (``floor(255·p)`` at the network's size, then resized as uint8; tiles at full
    resolution need no resize), the score its maximum / 255 (the release's image-level
    score). ``resize=None`` runs full resolution in tiles. The model is put in eval mode.
    ``image_bgr`` may also be a path or another array layout (:func:`as_bgr_image`).
    """
    image_bgr = as_bgr_image(image_bgr)
    if resize is not None and (isinstance(resize, bool) or not isinstance(resize, int)):
        raise TypeError(f"resize must be an int (pixels) or None, got {resize!r}")
    model.eval()
    opts = opts or RunOptions(device=next(model.parameters()).device)
    if resize is None:
        levels = to_png_levels(manipulated_map(predict_tiled(model, image_bgr, opts)))
    else:
        net_in = torch.from_numpy(resize_input(image_bgr, resize)).unsqueeze(0)
        net_probs = forward_probs(model, net_in, opts)[0].numpy()
        levels = release_levels(manipulated_map(net_probs), image_bgr.shape[:2])
    return levels, float(scored_map(levels).max())


def as_bgr_image(image: np.ndarray | str | Path) -> np.ndarray:
    """An image as the model takes it, uint8 H×W×3 BGR, converted as the scripts convert
    files: a path is read; grey (H×W or H×W×1) becomes three channels, a fourth (alpha)
    channel is dropped, 16-bit and float arrays are scaled as image files of those kinds
    are (float: 0–1 when no value exceeds 1, else 0–255). What cannot be an image (a
    boolean mask, a channels-first array, no pixels, NaN) is a clear error, not a score."""
    if isinstance(image, str | Path):
        return read_image(image)
    if not isinstance(image, np.ndarray):
        raise TypeError(
            f"expected a numpy array (H×W×3 BGR, as cv2.imread gives) or an image path, "
            f"got {type(image).__name__}"
        )
    numeric = np.issubdtype(image.dtype, np.integer) or np.issubdtype(image.dtype, np.floating)
    if image.dtype == np.bool_ or not numeric:
        raise ValueError(f"an image of {image.dtype} values: give uint8, uint16 or float pixels")
    if image.ndim == 3 and image.shape[2] in (1, 4):
        image = image[:, :, 0] if image.shape[2] == 1 else image[:, :, :3]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ValueError(
            f"expected H×W, H×W×3 (BGR) or H×W×4 (BGRA), channels last; got {image.shape}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ValueError(f"an image without pixels: shape {image.shape}")
    if np.issubdtype(image.dtype, np.floating) and not np.isfinite(image).all():
        raise ValueError("image values must be finite (NaN or infinity found)")
    image = to_uint8(image)
    if image.ndim == 2:
        image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
    return np.ascontiguousarray(image)


def to_png_levels(prob: np.ndarray) -> np.ndarray:
    """8-bit map as the release saves it: ``floor(255·p)``."""
    top = MAP_LEVELS - 1
    return np.floor(np.clip(prob, 0.0, 1.0) * top).astype(np.uint8)


def release_levels(prob_net: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """8-bit map at ``size`` (H, W) exactly as the release writes it: ``floor(255·p)`` at
    the network's size, then that uint8 map resized bilinearly (OpenCV's fixed-point
    uint8 arithmetic). Resizing the float map first can differ by one level."""
    levels = to_png_levels(prob_net)
    if levels.shape[-2:] == tuple(size):
        return levels
    return cv2.resize(levels, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)


def scored_map(levels: np.ndarray) -> np.ndarray:
    """The 8-bit map as the metrics score it and the reports give its maximum: levels
    / 255 in float32 (the release evaluates the map it wrote)."""
    return levels.astype(np.float32) / np.float32(MAP_LEVELS - 1)


def binary_png(levels: np.ndarray, threshold: float) -> np.ndarray:
    """0/255 binary map of an 8-bit map: ``levels / 255 > threshold``."""
    return np.where(levels > threshold * 255, 255, 0).astype(np.uint8)
