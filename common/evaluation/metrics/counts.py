"""What every evaluator counts with: tensors from any array, the refusal of NaN and
out-of-range maps, F1 and AUC from counts and histograms, the empty-mask F1 rules."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

DEFAULT_BINS = 1000
EMPTY_F1_RULES = {"release": 1.0, "seed": 0.0}


def as_tensor(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.detach().cpu()
    return t.to(dtype) if dtype is not None else t


def check_finite(values: torch.Tensor, what: str) -> None:
    if values.is_floating_point() and not torch.isfinite(values).all():
        raise ValueError(f"{what} contain NaN or infinite values; refusing to score them")


def harmonic(a: float | None, b: float | None) -> float | None:
    """Harmonic mean; None if either is undefined, 0 if both are 0."""
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


def f1_of(tp: int, fp: int, fn: int) -> float | None:
    """2TP / (2TP + FP + FN): 0 when nothing was found (a defined value, not a missing
    one); None only when there was nothing to find and nothing was flagged."""
    return ratio(2 * tp, 2 * tp + fp + fn)


def f1_from_counts(
    tp: torch.Tensor, fp: torch.Tensor, fn: torch.Tensor, empty: float
) -> torch.Tensor:
    """Per-element ``2TP / (2TP + FP + FN)``; ``empty`` where the denominator is 0."""
    den = 2 * tp + fp + fn
    return torch.where(
        den > 0, 2 * tp / den.clamp(min=1), torch.full_like(den, empty, dtype=torch.float64)
    )


def auc_from_histograms(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """ROC AUC from per-bin positive/negative counts (..., bins); ties in a bin count ½.

    NaN where a row has no positives or no negatives.
    """
    pos = pos.double()
    neg = neg.double()
    above = pos.flip(-1).cumsum(-1).flip(-1) - pos  # positives in higher bins
    wins = (neg * (above + 0.5 * pos)).sum(-1)
    total = pos.sum(-1) * neg.sum(-1)
    return torch.where(total > 0, wins / total.clamp(min=1), torch.full_like(total, math.nan))


def best_f1_from_histograms(pos: torch.Tensor, neg: torch.Tensor, empty: float) -> torch.Tensor:
    """Oracle F1: the best F1 over thresholds at the bin edges (per row)."""
    pos = pos.double()
    neg = neg.double()
    tp = pos.flip(-1).cumsum(-1).flip(-1)  # predicted positive: bin ≥ k
    fp = neg.flip(-1).cumsum(-1).flip(-1)
    fn = pos.sum(-1, keepdim=True) - tp
    f1 = f1_from_counts(tp, fp, fn, empty)
    no_pred = f1_from_counts(
        torch.zeros_like(tp[..., :1]),
        torch.zeros_like(fp[..., :1]),
        fn[..., :1] + tp[..., :1],
        empty,
    )
    return torch.maximum(f1.amax(-1), no_pred[..., 0])


def check_unit_range(probs: torch.Tensor) -> None:
    """One pass: NaN/inf and values outside [0, 1] are refused with a clear error."""
    if not probs.numel():
        return
    low, high = torch.aminmax(probs)
    if not (low >= 0 and high <= 1):  # also false for NaN
        check_finite(probs, "probability maps")
        raise ValueError("probability maps must lie in [0, 1]")


def bin_index(prob: torch.Tensor, bins: int) -> torch.Tensor:
    return (prob * bins).long().clamp_(0, bins - 1)


def mcc(tp: float, fp: float, fn: float, tn: float) -> float | None:
    den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return None if den == 0 else (tp * tn - fp * fn) / den
