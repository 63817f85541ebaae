"""The streaming evaluator against a per-image numpy loop, as the release evaluates.

The release scores each 8-bit map read back from its PNG on its own (numpy F1 and IoU at
0.5, scikit-learn's ROC AUC for the pixel AUC) and averages over images; our evaluator
takes batches of maps as tensors and keeps histograms. On 8-bit maps the two must give the
same numbers, whatever the batching (tests/test_metrics.py checks float maps, where the
binned pixel AUC is only close, and the micro AUC on 8-bit maps; this is the mean of
per-image AUCs on 8-bit maps, streamed in batches that do not divide the set).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from common.evaluation.metrics import LocalizationEvaluator


def make_data(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """8-bit maps (as read back from PNGs) correlated with random rectangular masks."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        y, x = rng.integers(0, size // 2, 2)
        h, w = rng.integers(size // 8, size // 2, 2)
        masks[i, y : y + h, x : x + w] = 1
    noise = rng.integers(0, 160, (n, size, size), dtype=np.uint8)
    maps = np.minimum(noise + masks * 96, 255).astype(np.uint8)
    return maps, masks


def per_image_loop(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    """The release's way: one image at a time, then the mean."""
    f1s, ious, aucs = [], [], []
    for m8, g in zip(maps, masks, strict=True):
        p = m8.astype(np.float64) / 255.0
        pred, gt = p > 0.5, g > 0
        tp = np.logical_and(pred, gt).sum()
        fp = np.logical_and(pred, ~gt).sum()
        fn = np.logical_and(~pred, gt).sum()
        f1s.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 1.0)
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else 1.0)
        aucs.append(roc_auc_score(gt.ravel(), p.ravel()))
    return {
        "pixel_f1": float(np.mean(f1s)),
        "pixel_iou": float(np.mean(ious)),
        "pixel_auc": float(np.mean(aucs)),
    }


def streamed(maps: np.ndarray, masks: np.ndarray, batch: int) -> dict[str, float]:
    ev = LocalizationEvaluator()
    for i in range(0, len(maps), batch):
        probs = torch.from_numpy(maps[i : i + batch]).float() / 255.0
        ev.update(probs, torch.from_numpy(masks[i : i + batch]), np.ones(len(probs), np.int64))
    r = ev.compute()
    return {k: r[k] for k in ("pixel_f1", "pixel_iou", "pixel_auc")}


@pytest.mark.parametrize("batch", [1, 3, 7])
def test_streaming_evaluator_equals_per_image_loop(batch):
    maps, masks = make_data(7, 48)
    want = per_image_loop(maps, masks)
    got = streamed(maps, masks, batch)
    assert got == pytest.approx(want, rel=1e-12, abs=1e-12)
