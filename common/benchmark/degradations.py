"""Degradations for robustness sweeps, applied to the image only (never the mask).

Each :class:`Perturbation` is deterministic per image: its random stream comes from the
run's seed, the image's file name and the perturbation itself, so the same image gets the same
noise in every run, process and order. They are plain picklable objects, applied in the
data-loading workers after decoding.

Our kinds say what their number is:

- ``jpeg:Q``: re-encode at JPEG quality Q (OpenCV, 4:2:0), exactly Q;
- ``blur:K``: Gaussian blur with a K×K kernel (K odd), σ from K by OpenCV's rule
  ``0.3·((K − 1)/2 − 1) + 0.8``;
- ``noise:S``: additive Gaussian noise of standard deviation S in 8-bit levels, per pixel
  and channel, rounded and clipped to 0..255;
- ``resize:F``: scale the image by F (area interpolation down, bilinear up); the map is
  brought back to the original size and scored against the original mask.

``--preset benco`` reproduces IMDL-BenCo's ``test_robust.py`` levels and semantics:
blur kernels 3, 7, …, 23 (its level 0 is the clean run), noise 3, 7, …, 23 given to
albumentations' ``GaussNoise(var_limit=(v, v))``, i.e. a *variance* v (standard deviation
√v, kind ``noise_var``), and JPEG 50, 60, …, 100 given to ``JpegCompression(quality_lower
=q − 1, quality_upper=q)``, i.e. a quality drawn from {q − 1, q} per image (kind
``jpeg_benco``).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

# kind → (what its level is, the level's type)
KINDS: dict[str, str] = {
    "jpeg": "JPEG quality (1–100)",
    "blur": "Gaussian kernel size (odd, ≥ 3)",
    "noise": "noise standard deviation in 8-bit levels (> 0)",
    "resize": "scale factor (0.05–4, not 1)",
    "noise_var": "noise variance in 8-bit levels² (> 0), IMDL-BenCo's var_limit",
    "jpeg_benco": "JPEG quality q: q − 1 or q per image, IMDL-BenCo's JpegCompression",
}
PRESETS: dict[str, dict[str, list[float]]] = {
    "benco": {
        "blur": [3, 7, 11, 15, 19, 23],
        "noise_var": [3, 7, 11, 15, 19, 23],
        "jpeg_benco": [50, 60, 70, 80, 90, 100],
    },
}


@dataclass(frozen=True)
class Perturbation:
    """One degradation at one level; ``perturbation(image, key)`` → degraded copy."""

    kind: str
    level: float
    seed: int = 0

    def __post_init__(self) -> None:
        problem = _check_level(self.kind, self.level)
        if problem:
            raise ValueError(problem)

    @property
    def name(self) -> str:
        """Folder-safe name, e.g. ``jpeg_75``, ``resize_0.5``."""
        return f"{self.kind}_{self.level:g}"

    def rng(self, key: str) -> np.random.Generator:
        kind_id = zlib.crc32(self.kind.encode())
        level_id = round(self.level * 1000)
        return np.random.default_rng([self.seed, zlib.crc32(key.encode()), kind_id, level_id])

    def __call__(self, image: np.ndarray, key: str) -> np.ndarray:
        """The degraded BGR uint8 image; ``key`` (the image's path) seeds its randomness
        by its file name only, so a data set moved elsewhere gets the same noise."""
        key = Path(key).name
        if self.kind == "jpeg":
            return jpeg(image, int(self.level))
        if self.kind == "jpeg_benco":
            quality = int(self.level) - int(self.rng(key).integers(0, 2))
            return jpeg(image, max(1, quality))
        if self.kind == "blur":
            k = int(self.level)
            return cv2.GaussianBlur(image, (k, k), 0)
        if self.kind in ("noise", "noise_var"):
            std = self.level if self.kind == "noise" else float(np.sqrt(self.level))
            noise = self.rng(key).normal(0.0, std, image.shape)
            return np.clip(np.rint(image.astype(np.float64) + noise), 0, 255).astype(np.uint8)
        if self.kind == "resize":
            h, w = image.shape[:2]
            size = (max(1, round(w * self.level)), max(1, round(h * self.level)))
            interp = cv2.INTER_AREA if self.level < 1 else cv2.INTER_LINEAR
            return cv2.resize(image, size, interpolation=interp)
        raise AssertionError(self.kind)


def jpeg(image: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return cv2.imdecode(buf, cv2.IMREAD_COLOR)


def _check_level(kind: str, level: float) -> str:
    if kind not in KINDS:
        return f"unknown perturbation {kind!r}; choose from {', '.join(KINDS)}"
    integer = float(level).is_integer()
    ok = {
        "jpeg": integer and 1 <= level <= 100,
        "jpeg_benco": integer and 2 <= level <= 100,
        "blur": integer and level >= 3 and int(level) % 2 == 1,
        "noise": level > 0,
        "noise_var": level > 0,
        "resize": 0.05 <= level <= 4 and level != 1,
    }[kind]
    return "" if ok else f"{kind} level {level:g} is not a {KINDS[kind]}"


def parse_sweep(spec: str, seed: int = 0) -> list[Perturbation]:
    """``"jpeg:50,70,90"`` → three perturbations (ValueError with the reason if not)."""
    kind, sep, levels = spec.partition(":")
    kind = kind.strip().lower()
    if not sep or not levels.strip():
        raise ValueError(f"expected KIND:LEVEL[,LEVEL…], got {spec!r}")
    out = []
    for text in levels.split(","):
        try:
            level = float(text)
        except ValueError as exc:
            raise ValueError(f"level {text!r} of {kind} is not a number") from exc
        out.append(Perturbation(kind, level, seed))
    return out


def preset(name: str, seed: int = 0) -> list[Perturbation]:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(PRESETS)}")
    return [Perturbation(k, v, seed) for k, levels in PRESETS[name].items() for v in levels]
