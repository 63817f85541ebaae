"""Thresholds chosen once on a labelled set, and used everywhere after.

``benchmark.py --th-from NAME``, the inference scripts' ``--write-thresholds FILE`` and
the end of a training run choose them; every inference script, the benchmark and the
server read them (``--thresholds FILE``, or the checkpoint's own), with the image-score
calibration fitted on the same set (:mod:`common.evaluation.calibration`).

The pixel threshold maximises the release's pixel-F1 (the mean over manipulated images
of the per-image F1) on the chosen set's 8-bit maps: with 256 map levels there are 255
distinct decisions (``level > k``), all scored from one histogram per image. The image
threshold maximises the image-level F1 the report uses (the paper's harmonic mean of
sensitivity and specificity for localisation models, precision/recall F1 for the
classifier) over every distinct cut of the image scores.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Iterable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from common.core.release import MAP_LEVELS
from common.core.reports import unique_names, write_json
from common.core.scores import NOT_PRISTINE, SCORE_RULES
from common.core.user_errors import UsageError, clip, require_file
from common.data.decode import BadInputError
from common.data.masks import MaskOptions, read_ground_truth
from common.data.sources import Record
from common.evaluation.calibration import Calibration, fit_platt
from common.evaluation.localization import find_map, map_candidates, read_saved_map
from common.evaluation.metrics import EMPTY_F1_RULES
from models.weights import read_checkpoint_entry

LEVELS = MAP_LEVELS
THRESHOLD_MIN, THRESHOLD_MAX = 1e-6, 1 - 1e-6  # the open interval every option accepts


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
    # a usable threshold lies strictly inside (0, 1), as the options require
    return float(np.clip(cuts[j], THRESHOLD_MIN, THRESHOLD_MAX)), float(f1[j])


# ----------------------------------------------------------------------------- the file

THRESHOLDS_VERSION = 1
DEFAULT_THRESHOLD = 0.5  # the release's, for pixels and images alike
CRITERIA = {
    "pixel": "mean per-image pixel-F1 (the release's pixel-F1)",
    "localization": "image F1: harmonic mean of sensitivity and specificity (the paper's)",
    "classification": "image F1 of precision and recall",
}


@dataclass(frozen=True)
class ChosenThresholds:
    """Thresholds chosen on one labelled set, and the image-score calibration fitted there:
    what a thresholds file and a checkpoint's metadata hold. ``None``: none could be
    chosen (e.g. no authentic image), the default applies."""

    task: str  # localization | three_class | classification
    pixel: float | None
    image: float | None
    chosen_on: str
    images: int
    checkpoint_sha256: str | None = None
    pixel_f1_there: float | None = None
    image_f1_there: float | None = None
    calibration: Calibration | None = None
    score: str = NOT_PRISTINE  # what the scores and maps they were chosen on are

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["calibration"] = None if self.calibration is None else self.calibration.to_dict()
        criterion = {
            "image": CRITERIA["classification" if self.task == "classification" else "localization"]
        }
        if self.task != "classification":
            criterion["pixel"] = CRITERIA["pixel"]
        return {"version": THRESHOLDS_VERSION, **data, "criterion": criterion}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ChosenThresholds:
        fields = {k: data.get(k) for k in cls.__dataclass_fields__}
        if fields["calibration"] is not None:
            fields["calibration"] = Calibration.from_dict(fields["calibration"])
        for key in ("pixel", "image"):
            value = fields[key]
            if value is not None and not (isinstance(value, int | float) and 0 < value < 1):
                raise ValueError(f"{key} threshold must be a number in (0, 1), got {value!r}")
        if not isinstance(fields["task"], str) or not isinstance(fields["chosen_on"], str):
            raise ValueError("task and chosen_on must be names")
        fields["images"] = int(fields["images"] or 0)
        fields["score"] = fields["score"] or NOT_PRISTINE  # written before it was recorded
        if fields["score"] not in SCORE_RULES:
            raise ValueError(f"score must be one of {list(SCORE_RULES)}, got {fields['score']!r}")
        return cls(**fields)

    def describe(self) -> str:
        return f"chosen on {self.chosen_on} ({self.images} images)"

    def values(self) -> str:
        """ "pixel 0.402, image 0.557" (the thresholds that could be chosen), or ""."""
        parts = [] if self.pixel is None else [f"pixel {self.pixel:.3g}"]
        parts += [] if self.image is None else [f"image {self.image:.3g}"]
        return ", ".join(parts)


@dataclass(frozen=True)
class Thresholds:
    """The thresholds a run uses, the calibration of its image scores, and where each
    came from (said on the console and kept in the summary)."""

    pixel: float = DEFAULT_THRESHOLD
    image: float = DEFAULT_THRESHOLD
    calibration: Calibration | None = None
    source: str = "the release's default 0.5"

    def line(self, task: str) -> str:
        parts = [] if task == "classification" else [f"pixel {self.pixel:.3g}"]
        parts.append(f"image {self.image:.3g}")
        text = f"thresholds: {', '.join(parts)} ({self.source})"
        if self.calibration is not None:
            text += f"; image scores calibrated ({self.calibration.method}, "
            text += f"fitted on {self.calibration.fitted_on})"
        return text


def write_thresholds(path: str | Path, chosen: ChosenThresholds) -> Path:
    """Atomic JSON write; returns the path."""
    path = Path(path)
    write_json(path, chosen.to_dict())
    return path


def read_thresholds(path: str | Path, option: str = "--thresholds") -> ChosenThresholds:
    """A thresholds file; one that is missing or malformed is a :class:`UsageError`."""
    path = require_file(path, "thresholds file", option)
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or data.get("version") != THRESHOLDS_VERSION:
            raise ValueError(f"not a version-{THRESHOLDS_VERSION} thresholds file")
        return ChosenThresholds.from_dict(data)
    except (ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise UsageError(
            f"not a usable thresholds file: {clip(str(exc))}", f"{option} {path}"
        ) from exc


def stored_thresholds(checkpoint: str | Path) -> ChosenThresholds | None:
    """The thresholds a training run stored in its checkpoint (``thresholds``), if any.
    Official checkpoints hold none."""
    data = read_checkpoint_entry(checkpoint, "thresholds")
    if not data:
        return None
    try:
        return ChosenThresholds.from_dict(data)
    except (ValueError, TypeError, KeyError):
        return None


# ----------------------------------------------------------------------------- choosing


def _rounded(threshold: float) -> float:
    """Six decimals, kept inside (0, 1)."""
    return min(max(round(threshold, 6), THRESHOLD_MIN), THRESHOLD_MAX)


class ThresholdCollector:
    """What choosing thresholds needs, gathered image by image: the pixel-F1 curve over
    the maps' 8-bit levels (as the scripts write them) and the image scores. A training
    run's validation feeds it batch by batch (collectors of several processes merge);
    a finished run feeds it its maps on disk or its scores."""

    def __init__(self, task: str, empty_f1: str = "release", score: str = NOT_PRISTINE) -> None:
        self.task = task
        self.score = score  # what its maps and scores are (recorded with the choice)
        self.curve = PixelF1Curve(EMPTY_F1_RULES[empty_f1])
        self.scores: list[float] = []
        self.labels: list[int] = []

    def add(self, levels: np.ndarray, mask: np.ndarray | None, label: int, score: float) -> None:
        """One image: its 8-bit map, its mask (1 manipulated, 0 pristine, other values
        ignored; None: image level only), its label (< 0: unlabelled) and its score."""
        if label > 0 and mask is not None:
            self.curve.update(levels, mask)
        if label >= 0:
            self.scores.append(score)
            self.labels.append(int(label > 0))

    def update_maps(self, probs: Any, masks: Any, labels: Any) -> None:
        """``probs`` (N, H, W) P(manipulated); ``masks`` (N, H, W); ``labels`` (N,)."""
        probs, masks = np.asarray(probs, np.float32), np.asarray(masks)
        for p, m, y in zip(probs, masks, np.asarray(labels).tolist(), strict=True):
            levels = np.floor(np.clip(p, 0.0, 1.0) * (LEVELS - 1)).astype(np.uint8)
            region = m if (m == 1).any() else None  # a crop that missed the region
            self.add(levels, region, y, float(levels.max()) / (LEVELS - 1))

    def update_scores(self, scores: Any, labels: Any) -> None:
        for s, y in zip(np.asarray(scores).tolist(), np.asarray(labels).tolist(), strict=True):
            if y >= 0:
                self.scores.append(float(s))
                self.labels.append(int(y > 0))

    def merge(self, other: ThresholdCollector) -> None:
        self.curve.f1_sum += other.curve.f1_sum
        self.curve.images += other.curve.images
        self.scores += other.scores
        self.labels += other.labels

    def choose(self, chosen_on: str, checkpoint_sha256: str | None = None) -> ChosenThresholds:
        """The thresholds that maximise pixel-F1 (map tasks) and image-F1 (the paper's
        for map tasks, precision/recall F1 for the classifier), and the calibration."""
        classifier = self.task == "classification"
        pixel = None if classifier else self.curve.best()
        rule = "precision_recall" if classifier else "sens_spec"
        image = best_image_threshold(self.scores, self.labels, rule)
        return ChosenThresholds(
            task=self.task,
            pixel=None if pixel is None else _rounded(pixel[0]),
            image=None if image is None else _rounded(image[0]),
            chosen_on=chosen_on,
            images=len(self.scores),
            checkpoint_sha256=checkpoint_sha256,
            pixel_f1_there=None if pixel is None else pixel[1],
            image_f1_there=None if image is None else image[1],
            calibration=fit_platt(np.array(self.scores), np.array(self.labels), chosen_on),
            score=self.score,
        )


def choose_from_maps(
    records: Sequence[Record],
    pred_dir: Path,
    masks: MaskOptions,
    empty_f1: str,
    chosen_on: str,
    task: str = "localization",
    failures: Collection[str] = (),
    checkpoint_sha256: str | None = None,
    score: str = NOT_PRISTINE,
) -> ChosenThresholds:
    """The thresholds and calibration chosen on the 8-bit maps in ``pred_dir`` (as the
    scripts write them, found as the evaluation finds them; ``score``: what they map).
    Images that failed are left out; a mask of another size counts as the report counts
    it (``masks.size_policy``)."""
    collector = ThresholdCollector(task, empty_f1, score)
    binary = replace(masks, nclass=1)
    names = unique_names([r.image for r in records])
    for rec, name in zip(records, names, strict=True):
        if rec.image in failures:
            continue
        path = find_map(pred_dir, map_candidates(rec.image, name))
        if path is None:
            continue
        try:  # read as the report reads it (a mask of another size as its policy says)
            prob = read_saved_map(path)
            mask, label = read_ground_truth(rec.label, rec.mask, prob.shape, binary)
        except BadInputError:
            continue
        levels = np.rint(prob * (LEVELS - 1)).astype(np.uint8)
        collector.add(levels, mask, label, float(prob.max()))
    return collector.choose(chosen_on, checkpoint_sha256)


def choose_from_scores(
    scores: Sequence[float],
    labels: Sequence[int],
    chosen_on: str,
    checkpoint_sha256: str | None = None,
    score: str = NOT_PRISTINE,
) -> ChosenThresholds:
    """The classifier's image threshold (precision/recall F1) and calibration."""
    collector = ThresholdCollector("classification", score=score)
    collector.update_scores(scores, labels)
    return collector.choose(chosen_on, checkpoint_sha256)
