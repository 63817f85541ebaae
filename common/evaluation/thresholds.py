"""Choosing thresholds on one set, to report the others at them (``--th-from``).

The pixel threshold maximises the release's pixel-F1 (the mean over manipulated images
of the per-image F1) on the chosen set's 8-bit maps: with 256 map levels there are 255
distinct decisions (``level > k``), all scored from one histogram per image. The image
threshold maximises the image-level F1 the report uses (the paper's harmonic mean of
sensitivity and specificity for localisation models, precision/recall F1 for the
classifier) over every distinct cut of the image scores.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from common.core.release import MAP_LEVELS

LEVELS = MAP_LEVELS


class PixelF1Curve:
    """Per-image F1 at every 8-bit cut ``level > k`` (k = 0…254), summed over images."""

    def __init__(self, empty_f1: float = 1.0) -> None:
        self.empty_f1 = empty_f1
        self.f1_sum = np.zeros(LEVELS - 1)
        self.images = 0

    def update(self, levels: np.ndarray, mask: np.ndarray) -> None:
        """``levels`` uint8 map, ``mask`` {0, 1} of the same shape (other values ignored)."""
        pos = np.bincount(levels[mask == 1].ravel(), minlength=LEVELS)
        neg = np.bincount(levels[mask == 0].ravel(), minlength=LEVELS)
        # predicted positive at cut k: levels k+1 … 255
        tp = pos[::-1].cumsum()[::-1][1:]
        fp = neg[::-1].cumsum()[::-1][1:]
        fn = pos.sum() - tp
        den = 2 * tp + fp + fn
        f1 = np.where(den > 0, 2 * tp / np.maximum(den, 1), self.empty_f1)
        self.f1_sum += f1
        self.images += 1

    def best(self) -> tuple[float, float] | None:
        """(threshold on p, mean F1 there), or None without images. The threshold is the
        middle of its level step, so ``p > threshold`` is ``level > k``."""
        if not self.images:
            return None
        k = int(np.argmax(self.f1_sum))
        return (k + 0.5) / 255.0, float(self.f1_sum[k] / self.images)


def best_image_threshold(
    scores: Iterable[float], labels: Iterable[int], rule: str = "sens_spec"
) -> tuple[float, float] | None:
    """(threshold, F1 there) over every distinct cut of ``scores`` (``score > t``);
    ``rule`` ``sens_spec`` (harmonic mean of sensitivity and specificity) or
    ``precision_recall``. Labels < 0 are left out; None without both classes."""
    s = np.asarray(list(scores), dtype=np.float64)
    y = np.asarray(list(labels), dtype=np.int64)
    keep = y >= 0
    s, y = s[keep], y[keep] > 0
    if y.all() or not y.any():
        return None
    values = np.unique(s)
    cuts = np.concatenate([[values[0] - 1e-6], (values[:-1] + values[1:]) / 2])
    order = np.sort(s)
    pos_sorted = np.sort(s[y])
    # predictions at each cut: score > cut
    predicted = len(s) - np.searchsorted(order, cuts, side="right")
    tp = len(pos_sorted) - np.searchsorted(pos_sorted, cuts, side="right")
    fp = predicted - tp
    fn = y.sum() - tp
    tn = (~y).sum() - fp
    if rule == "sens_spec":
        a, b = tp / (tp + fn), tn / (tn + fp)
    elif rule == "precision_recall":
        a, b = tp / np.maximum(tp + fp, 1), tp / (tp + fn)
    else:
        raise ValueError(f"unknown rule {rule!r}")
    f1 = np.where(a + b > 0, 2 * a * b / np.maximum(a + b, 1e-12), 0.0)
    j = int(np.argmax(f1))
    return float(np.clip(cuts[j], 0.0, 1.0)), float(f1[j])
