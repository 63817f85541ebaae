"""Joint image/mask transforms (albumentations) and the release's normalisation.

Albumentations checks its package index for updates on import unless
NO_ALBUMENTATIONS_UPDATE is set; we set it before importing so nothing reaches for the
network.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np
import torch

from common.core.release import RELEASE_SIZE

# ImageNet constants applied in this order to the B, G, R channels (the release's
# convention; the official weights expect it).
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def normalize_bgr(image: np.ndarray) -> torch.Tensor:
    """uint8 H×W×3 BGR → float32 3×H×W, scaled to [0, 1] and normalised."""
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return x.sub_(mean).div_(std)


def normalize_bgr_batch(images: torch.Tensor) -> torch.Tensor:
    """uint8 N×H×W×3 (or N×3×H×W) BGR tensor → normalised float32 N×3×H×W (on its device)."""
    if images.shape[-1] == 3 and images.shape[1] != 3:
        images = images.permute(0, 3, 1, 2)
    mean = torch.tensor(MEAN, device=images.device).view(1, 3, 1, 1)
    std = torch.tensor(STD, device=images.device).view(1, 3, 1, 1)
    return (images.float() / 255.0 - mean) / std


ONE_OF_CHOICES = ("hflip", "vflip", "rot90", "brightness_contrast", "hsv")


@dataclass
class AugmentConfig:
    """Training augmentations; every degradation is off unless its probability is > 0.

    ``one_of`` names transforms of which one, picked uniformly, is applied with
    probability ``one_of_p`` (the seed's three-class recipe: all five, p 0.5); the
    brightness/contrast (±0.2) and HSV (20, 30, 20) shifts use albumentations' defaults,
    as the seed does.
    """

    size: int = RELEASE_SIZE
    crop: bool = False  # random crop of ``size`` (padding when smaller) instead of resize
    hflip: float = 0.5
    vflip: float = 0.0
    one_of: tuple[str, ...] = ()
    one_of_p: float = 0.5
    median_blur_p: float = 0.0
    median_blur_limit: int = 7  # odd kernel sizes 3..limit
    jpeg_p: float = 0.0
    jpeg_quality: tuple[int, int] = (70, 100)
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    noise_p: float = 0.0
    noise_var: tuple[float, float] = (25.0, 900.0)  # variance in 8-bit levels²
    rescale_p: float = 0.0
    rescale_range: tuple[float, float] = (0.5, 1.5)

    @classmethod
    def from_config(cls, cfg: Mapping[str, Any]) -> AugmentConfig:
        """The augmentation keys of a training config (lists become tuples)."""
        keys = {f.name for f in fields(cls)}
        return cls(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in keys}
        )

    def __post_init__(self) -> None:
        unknown = [name for name in self.one_of if name not in ONE_OF_CHOICES]
        if unknown:
            raise ValueError(
                f"one_of: unknown transform(s) {', '.join(map(repr, unknown))}; choose from "
                f"{', '.join(ONE_OF_CHOICES)}"
            )
        if self.median_blur_limit < 3 or self.median_blur_limit % 2 == 0:
            raise ValueError(f"median_blur_limit must be odd and ≥ 3, got {self.median_blur_limit}")
        low, high = self.noise_var
        if not 0 <= low <= high:
            raise ValueError(f"noise_var must be [low, high] with 0 ≤ low ≤ high, got {low, high}")


class VarianceGaussNoise(A.ImageOnlyTransform):
    """Additive Gaussian noise whose *variance* (in 8-bit levels²) is drawn uniformly from
    ``var_limit``, independently per pixel and channel: what albumentations 1.x's
    ``GaussNoise(var_limit=...)`` did, which the seed's recipe (25–900) and IMDL-BenCo's
    levels are written in. Albumentations 2 draws a standard deviation uniformly instead,
    a different distribution of noise strengths."""

    def __init__(self, var_limit: tuple[float, float] = (25.0, 900.0), p: float = 0.5) -> None:
        super().__init__(p=p)
        self.var_limit = (float(var_limit[0]), float(var_limit[1]))

    def get_params_dependent_on_data(
        self, params: dict[str, object], data: dict[str, object]
    ) -> dict[str, object]:
        image = data["image"]
        sigma = self.py_random.uniform(*self.var_limit) ** 0.5
        noise = self.random_generator.normal(0.0, sigma, np.shape(image)).astype(np.float32)
        return {"noise": noise}

    def apply(self, img: np.ndarray, noise: np.ndarray, **params: object) -> np.ndarray:
        noisy = img.astype(np.float32) + noise
        return np.clip(noisy, 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("var_limit",)


def _size_ops(size: int, crop: bool) -> list[A.BasicTransform]:
    if crop:
        return [
            A.PadIfNeeded(size, size, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
            A.RandomCrop(size, size),
        ]
    return [A.Resize(size, size, interpolation=cv2.INTER_LINEAR, mask_interpolation=0)]


def _one_of_op(name: str) -> A.BasicTransform:
    """One member of the ``one_of`` group (p 0.5 each: they are picked uniformly)."""
    if name == "hflip":
        return A.HorizontalFlip(p=0.5)
    if name == "vflip":
        return A.VerticalFlip(p=0.5)
    if name == "rot90":
        return A.RandomRotate90(p=0.5)
    if name == "brightness_contrast":
        return A.RandomBrightnessContrast(p=0.5)
    return A.HueSaturationValue(p=0.5)


def build_train_transform(cfg: AugmentConfig) -> A.Compose:
    """Geometry (resize or crop, flips, the ``one_of`` group) then forensic degradations
    (median blur, Gaussian blur, noise, JPEG), applied jointly to the image and its
    ``mask``/``edge`` targets (masks use nearest neighbour; photometric ops leave them)."""
    ops: list[A.BasicTransform] = []
    if cfg.rescale_p > 0:
        ops.append(
            A.RandomScale(
                scale_limit=(cfg.rescale_range[0] - 1, cfg.rescale_range[1] - 1),
                interpolation=cv2.INTER_LINEAR,
                mask_interpolation=0,
                p=cfg.rescale_p,
            )
        )
    ops += _size_ops(cfg.size, cfg.crop)
    if cfg.hflip > 0:
        ops.append(A.HorizontalFlip(p=cfg.hflip))
    if cfg.vflip > 0:
        ops.append(A.VerticalFlip(p=cfg.vflip))
    if cfg.one_of and cfg.one_of_p > 0:
        ops.append(A.OneOf([_one_of_op(name) for name in cfg.one_of], p=cfg.one_of_p))
    if cfg.median_blur_p > 0:
        ops.append(A.MedianBlur(blur_limit=(3, cfg.median_blur_limit), p=cfg.median_blur_p))
    if cfg.blur_p > 0:
        ops.append(A.GaussianBlur(sigma_limit=cfg.blur_sigma, blur_limit=0, p=cfg.blur_p))
    if cfg.noise_p > 0:
        ops.append(VarianceGaussNoise(var_limit=cfg.noise_var, p=cfg.noise_p))
    if cfg.jpeg_p > 0:
        ops.append(A.ImageCompression(quality_range=cfg.jpeg_quality, p=cfg.jpeg_p))
    return A.Compose(ops, additional_targets={"edge": "mask"})


def seed_pipeline(transform: Any, seed: tuple[int, ...]) -> None:
    """Give an augmentation pipeline, and every transform inside it, its own random stream
    drawn from ``seed`` (any tuple of non-negative ints, e.g. (epoch seed, sample index)).

    Why: seeded per sample, a sample's augmentation no longer depends on which loader
    worker draws it or what that worker drew before, so training is the same with 0, 2 or
    16 loader workers. Each transform gets a distinct stream (albumentations' own
    ``set_random_seed`` hands every child the same seed, which seeded per sample would tie
    e.g. a flip's coin to a crop's position). Objects that are not albumentations
    transforms (``MinSide``) are left alone."""
    nodes: list[Any] = []
    pending = [transform]
    while pending:  # pre-order: a pipeline before its children (it re-seeds them)
        node = pending.pop()
        if hasattr(node, "set_random_seed"):
            nodes.append(node)
            pending.extend(reversed(getattr(node, "transforms", ())))
    if not nodes:
        return
    states = np.random.SeedSequence(seed).generate_state(len(nodes))
    for node, state in zip(nodes, states, strict=True):
        node.set_random_seed(int(state))


MIN_SIDE = 64  # the network needs at least this many pixels per side


def upsample_to_min_side(image: np.ndarray, nearest: bool = False) -> np.ndarray:
    """An image (or mask, ``nearest``) scaled up so both sides are at least
    :data:`MIN_SIDE`, keeping its aspect: the one rule inference and validation share."""
    h, w = image.shape[:2]
    if min(h, w) >= MIN_SIDE:
        return image
    scale = MIN_SIDE / min(h, w)
    size = (max(MIN_SIDE, round(w * scale)), max(MIN_SIDE, round(h * scale)))
    method = cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR
    return cv2.resize(image, size, interpolation=method)


class MinSide:
    """Validation at the original size: only images smaller than :data:`MIN_SIDE` are
    scaled up (as inference does), masks and edges with them."""

    def __call__(self, **targets: np.ndarray) -> dict[str, np.ndarray]:
        return {
            key: upsample_to_min_side(value, nearest=key != "image")
            for key, value in targets.items()
        }


def build_eval_transform(size: int | None) -> A.Compose | MinSide:
    """Validation: resize only (None = keep the original size, at least MIN_SIDE)."""
    if size is None:
        return MinSide()
    return A.Compose(_size_ops(size, crop=False), additional_targets={"edge": "mask"})
