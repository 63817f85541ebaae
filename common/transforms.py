"""Joint image/mask transforms (albumentations) and the release's normalisation.

Albumentations checks its package index for updates on import unless
NO_ALBUMENTATIONS_UPDATE is set; we set it before importing so nothing reaches for the
network.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A
import cv2
import numpy as np
import torch

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


@dataclass
class AugmentConfig:
    """Training augmentations; every degradation is off unless its probability is > 0."""

    size: int = 512
    crop: bool = False  # random crop of ``size`` (padding when smaller) instead of resize
    hflip: float = 0.5
    vflip: float = 0.0
    jpeg_p: float = 0.0
    jpeg_quality: tuple[int, int] = (70, 100)
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 1.5)
    noise_p: float = 0.0
    noise_std: tuple[float, float] = (0.01, 0.05)  # fraction of the 0–255 range
    rescale_p: float = 0.0
    rescale_range: tuple[float, float] = (0.5, 1.5)


def _size_ops(size: int, crop: bool) -> list[A.BasicTransform]:
    if crop:
        return [
            A.PadIfNeeded(size, size, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0),
            A.RandomCrop(size, size),
        ]
    return [A.Resize(size, size, interpolation=cv2.INTER_LINEAR, mask_interpolation=0)]


def build_train_transform(cfg: AugmentConfig) -> A.Compose:
    """Geometry (resize or crop, flips) then forensic degradations, applied jointly to the
    image and its ``mask``/``edge`` targets (masks use nearest neighbour)."""
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
    if cfg.blur_p > 0:
        ops.append(A.GaussianBlur(sigma_limit=cfg.blur_sigma, blur_limit=0, p=cfg.blur_p))
    if cfg.noise_p > 0:
        ops.append(A.GaussNoise(std_range=cfg.noise_std, p=cfg.noise_p))
    if cfg.jpeg_p > 0:
        ops.append(A.ImageCompression(quality_range=cfg.jpeg_quality, p=cfg.jpeg_p))
    return A.Compose(ops, additional_targets={"edge": "mask"})


def build_eval_transform(size: int | None) -> A.Compose | None:
    """Validation: resize only (None = keep the original size)."""
    if size is None:
        return None
    return A.Compose(_size_ops(size, crop=False), additional_targets={"edge": "mask"})
