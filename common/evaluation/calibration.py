"""Calibrated image scores: what a score of 0.9 means, measured on a validation set.

Why Platt scaling (a logistic fit on the score's logit, P = σ(a·logit(s) + b)) rather
than isotonic regression: validation sets in this field are small (tens to a few hundred
images), where isotonic regression fits a staircase that ties many scores together and
varies a lot from set to set; two parameters fitted with Platt's smoothed targets do not
overfit, and for a > 0 the map is strictly increasing, so rankings (AUC) never change.
A fit whose slope is not positive (scores that rank the wrong way on the validation set)
is refused rather than inverted.

ECE (expected calibration error) uses 10 equal-width bins over [0, 1]: the mean over
images of |mean probability − share manipulated| in each image's bin.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ECE_BINS = 10
_EPS = 0.5 / 255  # half a map level: scores are 8-bit maps' maxima, 0 and 1 included


@dataclass(frozen=True)
class Calibration:
    """P(manipulated) = σ(a·logit(score) + b), fitted on ``fitted_on`` (``images``)."""

    a: float
    b: float
    fitted_on: str
    images: int
    ece_before: float
    ece_after: float
    method: str = "platt"

    def __call__(self, scores: np.ndarray | float) -> np.ndarray:
        z = self.a * _logit(np.asarray(scores, dtype=np.float64)) + self.b
        return 1.0 / (1.0 + np.exp(-z))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibration:
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, _EPS, 1 - _EPS)
    return np.log(p) - np.log1p(-p)


def reliability_bins(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> list[tuple[float, float, int]]:
    """Per non-empty equal-width bin: (mean probability, share manipulated, images).
    Labels > 0 are manipulated; labels < 0 are left out."""
    probs, labels = np.asarray(probs, np.float64), np.asarray(labels)
    keep = labels >= 0
    probs, truth = probs[keep], (labels[keep] > 0).astype(np.float64)
    which = np.minimum((probs * bins).astype(int), bins - 1)
    rows = []
    for k in range(bins):
        members = which == k
        if members.any():
            rows.append((probs[members].mean(), truth[members].mean(), int(members.sum())))
    return rows


def expected_calibration_error(
    probs: np.ndarray, labels: np.ndarray, bins: int = ECE_BINS
) -> float:
    """ECE over equal-width bins: the images' mean |mean probability − share
    manipulated| of their bin (labels < 0 left out; nan without labelled images)."""
    rows = reliability_bins(probs, labels, bins)
    images = sum(n for _, _, n in rows)
    if images == 0:
        return float("nan")
    return float(sum(n * abs(p - share) for p, share, n in rows) / images)


def fit_platt(
    scores: np.ndarray, labels: np.ndarray, fitted_on: str, iterations: int = 100
) -> Calibration | None:
    """Platt's fit (Newton's method, smoothed targets); None without both classes or
    when the scores rank the wrong way on this set."""
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    keep = labels >= 0
    x, y = _logit(scores[keep]), labels[keep] > 0
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return None
    if np.ptp(x) == 0:
        return None  # every score the same: nothing to fit
    target = np.where(y, (positives + 1) / (positives + 2), 1 / (negatives + 2))

    def loss(a: float, b: float) -> float:
        z = a * x + b  # cross-entropy against the smoothed targets, computed stably
        return float(np.sum(np.logaddexp(0.0, z) - target * z))

    a, b = 1.0, 0.0
    current = loss(a, b)
    for _ in range(iterations):
        p = 1.0 / (1.0 + np.exp(-(a * x + b)))
        grad = np.array([((p - target) * x).sum(), (p - target).sum()])
        w = p * (1 - p) + 1e-12
        hessian = np.array([[(w * x * x).sum(), (w * x).sum()], [(w * x).sum(), w.sum()]])
        step = np.linalg.solve(hessian + 1e-9 * np.eye(2), grad)
        scale = 1.0  # backtrack until the loss falls (Newton alone can overshoot)
        while scale > 1e-8 and loss(a - scale * step[0], b - scale * step[1]) > current:
            scale /= 2
        if scale <= 1e-8:
            break
        a, b = a - scale * step[0], b - scale * step[1]
        previous, current = current, loss(a, b)
        if previous - current < 1e-12 * max(1.0, abs(previous)):
            break
    if not a > 0:
        return None
    fitted = Calibration(float(a), float(b), fitted_on, int(keep.sum()), 0.0, 0.0)
    scores, truth = scores[keep], labels[keep]
    return replace(
        fitted,
        ece_before=expected_calibration_error(scores, truth),
        ece_after=expected_calibration_error(fitted(scores), truth),
    )


def reliability_diagram(
    path: Path, curves: dict[str, tuple[np.ndarray, np.ndarray]], title: str, bins: int = ECE_BINS
) -> None:
    """A PNG: per bin, the share manipulated against the mean probability, one line per
    curve (e.g. raw and calibrated), with each curve's ECE in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 4.5), dpi=120)
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="perfect")
    for name, (probs, labels) in curves.items():
        rows = reliability_bins(probs, labels, bins)
        ece = expected_calibration_error(probs, labels, bins)
        xs, ys = [p for p, _, _ in rows], [share for _, share, _ in rows]
        ax.plot(xs, ys, marker="o", label=f"{name} (ECE {ece:.3f})")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("image score (mean in bin)")
    ax.set_ylabel("share manipulated in bin")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
