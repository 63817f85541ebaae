"""What happens to a picture after it is edited, for authentic and forged images alike.

Real forgeries rarely reach a detector as their editor saved them: the photo was a JPEG
before it was edited (so the edited file is compressed twice, on the same 8×8 grid or,
after a crop, on a shifted one), it was resized on the way, and a social platform
re-compressed it. Each step here applies to every image with the same probabilities, so
none of them tells authentic from manipulated on its own; what differs is that a spliced,
moved or inpainted region does not carry the traces of the first compression the rest of
the picture carries.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

_INTERPOLATIONS = (cv2.INTER_AREA, cv2.INTER_LINEAR, cv2.INTER_CUBIC, cv2.INTER_LANCZOS4)


@dataclass(frozen=True)
class PostConfig:
    """Probabilities and ranges of each post-processing step (see the module docstring)."""

    noise_p: float = 0.5  # mild Gaussian sensor-like noise
    noise_sigma: tuple[float, float] = (0.5, 3.0)
    jpeg_p: float = 0.8  # final JPEG save
    jpeg_quality: tuple[int, int] = (70, 95)
    double_jpeg_p: float = 0.0  # the host was a JPEG before editing (then saved as JPEG again)
    first_quality: tuple[int, int] = (50, 95)
    shifted_grid_p: float = 0.5  # share of those whose first grid is shifted (a crop)
    resize_chain_p: float = 0.0  # 1–3 resamplings with random methods before the output size
    social_p: float = 0.0  # platform re-compression: downscale, 4:2:0 JPEG 70–85, once or twice
    social_quality: tuple[int, int] = (70, 85)


def encode_jpeg(image: np.ndarray, quality: int, subsampling_420: bool = False) -> bytes:
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    if subsampling_420:
        params += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_420]
    ok, buf = cv2.imencode(".jpg", image, params)
    if not ok:
        raise OSError("JPEG encoding failed")
    return buf.tobytes()


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def recompress(image: np.ndarray, quality: int) -> np.ndarray:
    return decode(encode_jpeg(image, quality))


def first_compression(image: np.ndarray, quality: int, shift: tuple[int, int]) -> np.ndarray:
    """JPEG at ``quality`` on a grid shifted by ``shift`` = (dy, dx) pixels (0, 0 is the
    grid of the final save: aligned double JPEG; 1–7 is a non-aligned one)."""
    dy, dx = shift
    if dy == 0 and dx == 0:
        return recompress(image, quality)
    padded = cv2.copyMakeBorder(image, dy, 0, dx, 0, cv2.BORDER_REFLECT)
    return recompress(padded, quality)[dy:, dx:]


def maybe_first_compression(
    image: np.ndarray, cfg: PostConfig, rng: np.random.Generator
) -> tuple[np.ndarray, bool]:
    """The photo's life before editing: with ``double_jpeg_p`` a first JPEG (its final
    save is then always a JPEG too, so the file is a double JPEG)."""
    if cfg.double_jpeg_p <= 0 or rng.random() >= cfg.double_jpeg_p:
        return image, False
    quality = int(rng.integers(cfg.first_quality[0], cfg.first_quality[1] + 1))
    shift = (0, 0)
    if rng.random() < cfg.shifted_grid_p:
        shift = (int(rng.integers(0, 8)), int(rng.integers(0, 8)))
        if shift == (0, 0):
            shift = (0, int(rng.integers(1, 8)))
    return first_compression(image, quality, shift), True


def _resize_chain(image: np.ndarray, out_size: int, rng: np.random.Generator) -> np.ndarray:
    for _ in range(int(rng.integers(1, 4))):
        side = round(image.shape[0] * rng.uniform(0.6, 1.3))
        side = max(out_size // 2, min(side, out_size * 2))
        method = _INTERPOLATIONS[int(rng.integers(len(_INTERPOLATIONS)))]
        image = cv2.resize(image, (side, side), interpolation=method)
    return image


def finish(
    image: np.ndarray,
    mask: np.ndarray,
    out_size: int,
    cfg: PostConfig,
    rng: np.random.Generator,
    double: bool = False,
) -> tuple[np.ndarray, np.ndarray, bytes | None]:
    """Resize to ``out_size`` (through a chain of resamplings with ``resize_chain_p``),
    mild noise, and the final save: the returned bytes are the JPEG file as saved (None
    when the image was not JPEG-compressed at the end, to be stored losslessly)."""
    if cfg.resize_chain_p > 0 and rng.random() < cfg.resize_chain_p:
        image = _resize_chain(image, out_size, rng)
    if image.shape[0] != out_size:
        method = cv2.INTER_AREA if image.shape[0] > out_size else cv2.INTER_LINEAR
        image = cv2.resize(image, (out_size, out_size), interpolation=method)
    if mask.shape[0] != out_size:
        mask = cv2.resize(mask, (out_size, out_size), interpolation=cv2.INTER_NEAREST)
    if rng.random() < cfg.noise_p:
        noise = rng.normal(0, rng.uniform(*cfg.noise_sigma), image.shape)
        image = np.clip(image + noise, 0, 255).astype(np.uint8)
    if cfg.social_p > 0 and rng.random() < cfg.social_p:
        data = _social(image, rng, cfg)
        return decode(data), mask, data
    if double or rng.random() < cfg.jpeg_p:
        quality = int(rng.integers(cfg.jpeg_quality[0], cfg.jpeg_quality[1] + 1))
        data = encode_jpeg(image, quality)
        return decode(data), mask, data
    return image, mask, None


def _social(image: np.ndarray, rng: np.random.Generator, cfg: PostConfig) -> bytes:
    """A platform's upload pipeline: downscaled (and shown back at the same size),
    re-encoded with 4:2:0 chroma at quality 70–85; half the time shared once more."""
    size = image.shape[0]
    if rng.random() < 0.7:
        small = round(size * rng.uniform(0.6, 0.95))
        image = cv2.resize(image, (small, small), interpolation=cv2.INTER_AREA)
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR)
    lo, hi = cfg.social_quality
    data = encode_jpeg(image, int(rng.integers(lo, hi + 1)), subsampling_420=True)
    if rng.random() < 0.5:
        data = encode_jpeg(decode(data), int(rng.integers(lo, hi + 1)), subsampling_420=True)
    return data
