"""Streaming evaluators with the release's metric definitions (see docs/metrics.md).

Each evaluator has ``update(...)`` per batch (vectorised, no full maps kept),
``merge(other)`` to combine shards (DDP), and ``compute()`` → a plain dict. Undefined
values (e.g. AUC with one class present) are ``None`` and explained under ``notes``;
never 0.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from common.core.release import MAP_LEVELS
from common.core.scores import manipulated_probability
from common.data.masks import IGNORE

DEFAULT_BINS = 1000
EMPTY_F1_RULES = {"release": 1.0, "seed": 0.0}


def _as_tensor(x: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
    t = x if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))
    t = t.detach().cpu()
    return t.to(dtype) if dtype is not None else t


def _check_finite(values: torch.Tensor, what: str) -> None:
    if values.is_floating_point() and not torch.isfinite(values).all():
        raise ValueError(f"{what} contain NaN or infinite values; refusing to score them")


def harmonic(a: float | None, b: float | None) -> float | None:
    """Harmonic mean; None if either is undefined, 0 if both are 0."""
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def _ratio(num: float, den: float) -> float | None:
    return None if den == 0 else float(num) / float(den)


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


def _check_unit_range(probs: torch.Tensor) -> None:
    """One pass: NaN/inf and values outside [0, 1] are refused with a clear error."""
    if not probs.numel():
        return
    low, high = torch.aminmax(probs)
    if not (low >= 0 and high <= 1):  # also false for NaN
        _check_finite(probs, "probability maps")
        raise ValueError("probability maps must lie in [0, 1]")


def _bin_index(prob: torch.Tensor, bins: int) -> torch.Tensor:
    return (prob * bins).long().clamp_(0, bins - 1)


def image_level_metrics(
    scores: np.ndarray, labels: np.ndarray, threshold: float = 0.5
) -> tuple[dict[str, Any], list[str]]:
    """Image-level AUC, accuracy, sensitivity, specificity, image-F1 (harmonic mean of
    sensitivity and specificity, the paper's), and the usual precision/recall F1."""
    notes: list[str] = []
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64)
    keep = labels >= 0
    scores, labels = scores[keep], labels[keep] > 0
    n = len(labels)
    pred = scores > threshold
    tp = int((pred & labels).sum())
    tn = int((~pred & ~labels).sum())
    fp = int((pred & ~labels).sum())
    fn = int((~pred & labels).sum())
    if n and 0 < labels.sum() < n:
        auc: float | None = float(roc_auc_score(labels, scores))
    else:
        auc = None
        if n:
            notes.append("image_auc undefined: only one image class present")
    sens = _ratio(tp, tp + fn)
    spec = _ratio(tn, tn + fp)
    if sens is None and n:
        notes.append("image_sensitivity undefined: no manipulated images")
    if spec is None and n:
        notes.append("image_specificity undefined: no authentic images")
    precision = _ratio(tp, tp + fp)
    return {
        "image_auc": auc,
        "image_accuracy": _ratio(tp + tn, n),
        "image_sensitivity": sens,
        "image_specificity": spec,
        "image_f1": harmonic(sens, spec),
        "image_precision": precision,
        "image_recall": sens,
        "image_f1_precision_recall": harmonic(precision, sens),
        "image_tp": tp,
        "image_tn": tn,
        "image_fp": fp,
        "image_fn": fn,
        "image_threshold": threshold,
        "num_labelled_images": n,
    }, notes


class LocalizationEvaluator:
    """Binary localisation + detection, as the release evaluates (see docs/metrics.md).

    Pixel metrics are over tampered images (label > 0) with a mask: per-image F1 and IoU
    at ``threshold`` (``p > threshold``) averaged over those images (``pixel_f1``, the
    release's number), dataset-level (micro) F1/IoU/precision/recall, per-image pixel AUC
    averaged over images whose mask has both classes, dataset-level pixel AUC, and the
    per-image oracle F1 (best threshold per image), all from ``bins``-bin histograms.
    Mask pixels equal to :data:`~common.data.masks.IGNORE` count nowhere. Authentic images
    (label 0) add their per-image pixel false-positive rate (the share of their pixels
    above ``threshold``), averaged as ``pixel_fpr_authentic``: the false alarms
    practitioners care about, which the release's pixel-F1 never sees.

    Where the values go: ``summary.json`` gets all of :meth:`compute`; the printed table
    ``TABLE_KEYS``; the per-image CSV ``ROW_KEYS`` (what :meth:`update` returns per
    image); a training run's ``log.csv`` ``LOG_KEYS`` (as ``val_<key>``).
    """

    TABLE_KEYS = (
        "pixel_f1",
        "pixel_iou",
        "pixel_f1_best_threshold",
        "pixel_auc",
        "pixel_f1_micro",
        "pixel_fpr_authentic",
        "image_auc",
        "image_accuracy",
        "image_sensitivity",
        "image_specificity",
        "image_f1",
        "image_f1_precision_recall",
        "com_f1",
        "num_images",
    )
    ROW_KEYS = ("pixel_f1", "pixel_iou", "pixel_fpr")
    LOG_KEYS = (
        "pixel_f1",
        "pixel_iou",
        "pixel_auc",
        "pixel_fpr_authentic",
        "image_auc",
        "image_f1",
        "com_f1",
    )

    def __init__(
        self,
        threshold: float = 0.5,
        image_threshold: float = 0.5,
        bins: int = DEFAULT_BINS,
        empty_f1: str = "release",
    ) -> None:
        if empty_f1 not in EMPTY_F1_RULES:
            raise ValueError(f"empty_f1 must be one of {list(EMPTY_F1_RULES)}, got {empty_f1!r}")
        self.threshold = threshold
        self.image_threshold = image_threshold
        self.bins = bins
        self.empty_f1 = empty_f1
        self.reset()

    def reset(self) -> None:
        self.per_image: dict[str, list[float]] = {
            "f1": [],
            "iou": [],
            "auc": [],
            "best_f1": [],
            "fpr_authentic": [],
        }
        self.counts = torch.zeros(4, dtype=torch.float64)  # tp, fp, fn, tn (tampered images)
        self.hist = torch.zeros(2, self.bins, dtype=torch.float64)  # pos, neg
        self.scores: list[float] = []
        self.labels: list[int] = []

    def update(
        self,
        probs: Any,
        masks: Any | None,
        labels: Sequence[int] | Any,
        scores: Sequence[float] | Any | None = None,
    ) -> list[dict[str, float | None]]:
        """Add a batch: ``probs`` (N, H, W) in [0, 1], ``masks`` (N, H, W) in {0, 1} (or
        None), ``labels`` (N,) (0 authentic, > 0 manipulated, −1 unknown), optional image
        ``scores`` (default: the map's maximum). Returns per-image pixel F1/IoU rows."""
        probs = _as_tensor(probs, torch.float32)
        if probs.ndim == 2:
            probs = probs[None]
        _check_unit_range(probs)
        labels_t = _as_tensor(labels, torch.long).reshape(-1)
        n = probs.shape[0]
        if labels_t.numel() != n:
            raise ValueError(f"{n} maps but {labels_t.numel()} labels")
        score_t = (
            probs.flatten(1).amax(1)
            if scores is None
            else _as_tensor(scores, torch.float64).reshape(-1)
        )
        _check_finite(score_t, "image scores")
        self.scores += score_t.double().tolist()
        self.labels += labels_t.tolist()
        rows: list[dict[str, float | None]] = [
            {"pixel_f1": None, "pixel_iou": None, "pixel_fpr": None} for _ in range(n)
        ]
        authentic = labels_t == 0
        if authentic.any():  # every pixel is pristine: FPR = share predicted manipulated
            fpr = (probs[authentic].flatten(1) > self.threshold).double().mean(1)
            self.per_image["fpr_authentic"] += fpr.tolist()
            for j, i in enumerate(torch.nonzero(authentic).flatten().tolist()):
                rows[i]["pixel_fpr"] = fpr[j].item()
        if masks is None:
            return rows
        gt = _as_tensor(masks)
        if gt.ndim == 2:
            gt = gt[None]
        if gt.shape != probs.shape:
            raise ValueError(
                f"masks {tuple(gt.shape)} and maps {tuple(probs.shape)} differ in shape"
            )
        sel = labels_t > 0
        if not sel.any():
            return rows
        if bool(sel.all()):
            p, gt = probs.flatten(1), gt.flatten(1)
        else:
            p, gt = probs[sel].flatten(1), gt[sel].flatten(1)
        k = p.shape[0]
        # One int32 code per pixel, (image, bin, prediction, truth), and one bincount:
        # it gives the per-image histograms by class and the confusion counts at once.
        # Ignored pixels (IGNORE in the mask) go to one extra cell, dropped.
        ignored = gt == IGNORE
        positive = (gt > 0) & ~ignored
        code = (p * self.bins).to(torch.int32).clamp_(0, self.bins - 1).mul_(4)
        code.add_((p > self.threshold).to(torch.int32).mul_(2)).add_(positive.to(torch.int32))
        code.add_(torch.arange(k, dtype=torch.int32).unsqueeze(1) * (self.bins * 4))
        size = k * self.bins * 4
        if ignored.any():
            code.masked_fill_(ignored, size)
        cells = torch.bincount(code.view(-1), minlength=size + 1)[:size]
        cells = cells.view(k, self.bins, 2, 2).double()  # [image, bin, pred, truth]
        neg, pos = cells.sum(2).unbind(-1)
        tn, fn, fp, tp = cells.sum(1).flatten(1).unbind(1)
        empty = EMPTY_F1_RULES[self.empty_f1]
        f1 = f1_from_counts(tp, fp, fn, empty)
        iou_den = tp + fp + fn
        iou = torch.where(iou_den > 0, tp / iou_den.clamp(min=1), torch.full_like(tp, empty))
        auc = auc_from_histograms(pos, neg)
        best = best_f1_from_histograms(pos, neg, empty)
        self.per_image["f1"] += f1.tolist()
        self.per_image["iou"] += iou.tolist()
        self.per_image["auc"] += [a for a in auc.tolist() if not math.isnan(a)]
        self.per_image["best_f1"] += best.tolist()
        self.counts += torch.stack([tp.sum(), fp.sum(), fn.sum(), tn.sum()])
        self.hist[0] += pos.sum(0)
        self.hist[1] += neg.sum(0)
        fpr = torch.where(fp + tn > 0, fp / (fp + tn).clamp(min=1), torch.nan)
        for j, i in enumerate(torch.nonzero(sel).flatten().tolist()):
            value = fpr[j].item()
            rows[i] = {
                "pixel_f1": f1[j].item(),
                "pixel_iou": iou[j].item(),
                "pixel_fpr": None if math.isnan(value) else value,
            }
        return rows

    def merge(self, other: LocalizationEvaluator) -> None:
        """Add another shard's state (e.g. gathered from another DDP rank)."""
        for key in self.per_image:
            self.per_image[key] += other.per_image[key]
        self.counts += other.counts
        self.hist += other.hist
        self.scores += other.scores
        self.labels += other.labels

    def compute(self) -> dict[str, Any]:
        notes: list[str] = []
        n_tampered = len(self.per_image["f1"])
        tp, fp, fn, _ = self.counts.tolist()

        def mean(key: str) -> float | None:
            values = self.per_image[key]
            return float(np.mean(values)) if values else None

        if n_tampered == 0:
            notes.append("pixel metrics undefined: no manipulated images with masks")
        micro_auc = auc_from_histograms(self.hist[0], self.hist[1]).item()
        pixel = {
            "pixel_f1": mean("f1"),
            "pixel_iou": mean("iou"),
            "pixel_f1_best_threshold": mean("best_f1"),
            "pixel_auc": mean("auc"),
            "pixel_f1_micro": _ratio(2 * tp, 2 * tp + fp + fn),
            "pixel_iou_micro": _ratio(tp, tp + fp + fn),
            "pixel_precision_micro": _ratio(tp, tp + fp),
            "pixel_recall_micro": _ratio(tp, tp + fn),
            "pixel_auc_micro": None if math.isnan(micro_auc) else micro_auc,
            "pixel_fpr_authentic": mean("fpr_authentic"),
            "pixel_threshold": self.threshold,
            "num_tampered_scored": n_tampered,
            "num_authentic_scored": len(self.per_image["fpr_authentic"]),
            "num_pixel_auc_images": len(self.per_image["auc"]),
        }
        image, image_notes = image_level_metrics(
            np.array(self.scores), np.array(self.labels), self.image_threshold
        )
        notes += image_notes
        result = {**pixel, **image}
        result["com_f1"] = harmonic(result["pixel_f1"], result["image_f1"])
        result["num_images"] = len(self.scores)
        result["empty_f1_rule"] = self.empty_f1
        result["notes"] = notes
        return result


def _mcc(tp: float, fp: float, fn: float, tn: float) -> float | None:
    den = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return None if den == 0 else (tp * tn - fp * fn) / den


CLASS_NAMES = {1: "tampered", 2: "desensitised"}
_LEVELS = MAP_LEVELS  # per-image AUC on 8-bit maps, as written and as the seed reads them back
_SEED_MCC_EPS = 1e-5  # the seed's MCC denominator carries this epsilon


def _seed_ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den per element (counts), 0 where den is 0 (the seed turns NaN into 0)."""
    return torch.where(den > 0, num / den.clamp(min=1), torch.zeros_like(num))


class ThreeClassEvaluator:
    """Three-class localisation (0 pristine, 1 tampered, 2 desensitised), the seed's table.

    Plain names are the seed's per-image definitions, averaged over all evaluated images
    (``infer_3labels_merge_calmetrics.py``'s ``3kinds_metric.csv``). Per image, with the
    prediction = argmax of the class maps and, for class c, the binary masks
    ``truth == c`` and ``prediction == c``:

    - ``f1_c`` = 2TP/(2TP+FP+FN); an empty prediction on an empty mask scores
      ``empty_f1`` (0, the seed's rule, by default; 1 is the release's);
    - ``iou_c`` = TP/(TP+FP+FN), 0 when empty; ``fpr_c`` = FP/(FP+TN), 0 without
      negatives; ``mcc_c`` = (TP·TN − FP·FN)/(√((TP+FP)(TP+FN)(TN+FP)(TN+FN)) + 10⁻⁵);
    - ``auc_c``: ROC AUC of the class's 8-bit probability map against ``truth == c``;
      0 where undefined (class absent or everywhere), as the seed scores it;
    - ``miou``, ``pixel_accuracy``, ``mean_pixel_accuracy``: from the image's 3×3
      confusion matrix (rows truth, columns prediction): the mean IoU over classes with a
      non-empty union, trace/total, and the mean recall over classes present in the truth
      (the FCN definitions of the seed's own metric code).

    The same quantities from the dataset's summed counts carry a ``_micro`` suffix.
    Where the values go: as :class:`LocalizationEvaluator` says (``TABLE_KEYS``,
    ``ROW_KEYS``, ``LOG_KEYS``; ``summary.json`` gets all).
    """

    # The seed's per-image table (its 3kinds_metric.csv), under our names.
    ROW_KEYS = (
        "f1_tampered",
        "iou_tampered",
        "mcc_tampered",
        "auc_tampered",
        "fpr_tampered",
        "f1_desensitised",
        "iou_desensitised",
        "mcc_desensitised",
        "auc_desensitised",
        "fpr_desensitised",
        "miou",
        "pixel_accuracy",
        "mean_pixel_accuracy",
    )
    TABLE_KEYS = (*ROW_KEYS, "f1_tampered_micro", "f1_desensitised_micro", "miou_micro")
    LOG_KEYS = (
        "miou",
        "f1_tampered",
        "iou_tampered",
        "f1_desensitised",
        "iou_desensitised",
        "pixel_accuracy",
        "mean_pixel_accuracy",
    )

    def __init__(self, nclass: int = 3, bins: int = DEFAULT_BINS, empty_f1: str = "seed") -> None:
        if empty_f1 not in EMPTY_F1_RULES:
            raise ValueError(f"empty_f1 must be one of {list(EMPTY_F1_RULES)}, got {empty_f1!r}")
        self.nclass = nclass
        self.bins = bins
        self.empty_f1 = empty_f1
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.nclass, self.nclass, dtype=torch.float64)
        self.hist = torch.zeros(self.nclass, 2, self.bins, dtype=torch.float64)
        names = [CLASS_NAMES.get(c, str(c)) for c in range(1, self.nclass)]
        keys = [f"{m}_{n}" for n in names for m in ("f1", "iou", "mcc", "fpr", "auc")]
        keys += ["miou", "pixel_accuracy", "mean_pixel_accuracy"]
        self.per_image: dict[str, list[float]] = {key: [] for key in keys}
        self.auc_undefined = dict.fromkeys(names, 0)
        self.num_images = 0

    def _class_rows(self, cm: torch.Tensor, c: int) -> dict[str, torch.Tensor]:
        """Seed per-image values of class ``c`` from per-image confusion matrices (N, C, C)."""
        tp = cm[:, c, c]
        fp = cm[:, :, c].sum(1) - tp
        fn = cm[:, c, :].sum(1) - tp
        tn = cm.sum((1, 2)) - tp - fp - fn
        den = torch.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)) + _SEED_MCC_EPS
        return {
            "f1": f1_from_counts(tp, fp, fn, EMPTY_F1_RULES[self.empty_f1]),
            "iou": _seed_ratio(tp, tp + fp + fn),
            "mcc": (tp * tn - fp * fn) / den,
            "fpr": _seed_ratio(fp, fp + tn),
        }

    def update(self, probs: Any, target: Any) -> list[dict[str, float]]:
        """``probs`` (N, C, H, W) softmax maps, ``target`` (N, H, W) class indices.
        Returns each image's seed values (the per-image CSV row)."""
        probs = _as_tensor(probs, torch.float32)
        _check_finite(probs, "probability maps")
        target = _as_tensor(target, torch.long)
        if (
            probs.ndim != 4
            or probs.shape[1] != self.nclass
            or target.shape != (probs.shape[0], *probs.shape[2:])
        ):
            raise ValueError(
                f"need probs (N, {self.nclass}, H, W) and target (N, H, W); "
                f"got {tuple(probs.shape)} and {tuple(target.shape)}"
            )
        if target.numel() and (target.min() < 0 or target.max() >= self.nclass):
            raise ValueError(f"target values must be in 0..{self.nclass - 1}")
        n, k = probs.shape[0], self.nclass
        pred = probs.argmax(1)
        image = torch.arange(n).view(n, 1, 1)
        cm = torch.bincount(
            (image * k * k + target * k + pred).flatten(), minlength=n * k * k
        ).view(n, k, k)
        cm = cm.double()
        self.confusion += cm.sum(0)
        values: dict[str, torch.Tensor] = {}
        for c in range(1, k):
            name = CLASS_NAMES.get(c, str(c))
            for key, v in self._class_rows(cm, c).items():
                values[f"{key}_{name}"] = v
            levels = (probs[:, c] * (_LEVELS - 1)).floor().long().clamp_(0, _LEVELS - 1)
            positive = (target == c).long()
            counts = torch.bincount(
                (image * 2 * _LEVELS + positive * _LEVELS + levels).flatten(),
                minlength=n * 2 * _LEVELS,
            ).view(n, 2, _LEVELS)
            auc = auc_from_histograms(counts[:, 1], counts[:, 0])
            self.auc_undefined[name] = self.auc_undefined.get(name, 0) + int(auc.isnan().sum())
            values[f"auc_{name}"] = torch.nan_to_num(auc, nan=0.0)
        diag = torch.diagonal(cm, dim1=1, dim2=2)
        rows, cols = cm.sum(2), cm.sum(1)
        union = rows + cols - diag
        iou = torch.where(union > 0, diag / union.clamp(min=1), torch.nan)
        recall = torch.where(rows > 0, diag / rows.clamp(min=1), torch.nan)
        values["miou"] = torch.nanmean(iou, dim=1)
        values["pixel_accuracy"] = diag.sum(1) / cm.sum((1, 2)).clamp(min=1)
        values["mean_pixel_accuracy"] = torch.nanmean(recall, dim=1)
        for key, v in values.items():
            self.per_image.setdefault(key, []).extend(v.tolist())
        for c in range(k):
            idx = _bin_index(probs[:, c].flatten(), self.bins)  # dataset-level AUC
            g = (target == c).flatten()
            self.hist[c, 0] += torch.bincount(idx[g], minlength=self.bins).double()
            self.hist[c, 1] += torch.bincount(idx[~g], minlength=self.bins).double()
        self.num_images += n
        return [{key: float(v[i]) for key, v in values.items()} for i in range(n)]

    def merge(self, other: ThreeClassEvaluator) -> None:
        self.confusion += other.confusion
        self.hist += other.hist
        for key, values in other.per_image.items():
            self.per_image.setdefault(key, []).extend(values)
        for name, count in other.auc_undefined.items():
            self.auc_undefined[name] = self.auc_undefined.get(name, 0) + count
        self.num_images += other.num_images

    def compute(self) -> dict[str, Any]:
        result: dict[str, Any] = {"num_images": self.num_images, "empty_f1_rule": self.empty_f1}
        notes: list[str] = []
        for key, values in self.per_image.items():
            result[key] = float(np.mean(values)) if values else None
        for name, undefined in self.auc_undefined.items():
            if undefined:
                notes.append(
                    f"auc_{name}: {undefined} image(s) without both classes score 0 (the "
                    f"seed's rule); auc_{name}_micro is the dataset-level value"
                )
        cm = self.confusion
        total = cm.sum().item()
        ious, recalls = [], []
        for c in range(self.nclass):
            tp = cm[c, c].item()
            fp = cm[:, c].sum().item() - tp
            fn = cm[c, :].sum().item() - tp
            tn = total - tp - fp - fn
            iou = _ratio(tp, tp + fp + fn)
            if iou is not None:
                ious.append(iou)
            recall = _ratio(tp, tp + fn)
            if recall is not None:
                recalls.append(recall)
            if c == 0:
                continue
            name = CLASS_NAMES.get(c, str(c))
            auc = auc_from_histograms(self.hist[c, 0], self.hist[c, 1]).item()
            if math.isnan(auc):
                notes.append(f"auc_{name}_micro undefined: class {c} absent or everywhere")
            result.update(
                {
                    f"f1_{name}_micro": _ratio(2 * tp, 2 * tp + fp + fn),
                    f"iou_{name}_micro": iou,
                    f"mcc_{name}_micro": _mcc(tp, fp, fn, tn),
                    f"auc_{name}_micro": None if math.isnan(auc) else auc,
                    f"fpr_{name}_micro": _ratio(fp, fp + tn),
                }
            )
        result["miou_micro"] = float(np.mean(ious)) if ious else None
        result["pixel_accuracy_micro"] = _ratio(cm.trace().item(), total)
        result["mean_pixel_accuracy_micro"] = float(np.mean(recalls)) if recalls else None
        result["confusion_matrix"] = cm.long().tolist()
        result["notes"] = notes
        return result


class ClassificationEvaluator:
    """Image-level classification: AUC, accuracy, precision, recall, F1, MCC, FPR and the
    confusion matrix. Binary scores (N,) or class probabilities (N, K). Where the
    values go: as :class:`LocalizationEvaluator` says (no per-image metrics: the
    classifier's CSV rows hold the score and the decision)."""

    TABLE_KEYS = ("auc", "accuracy", "precision", "recall", "f1", "mcc", "fpr", "num_images")
    ROW_KEYS: tuple[str, ...] = ()
    LOG_KEYS = ("auc", "accuracy", "precision", "recall", "f1", "mcc")

    def __init__(self, threshold: float = 0.5) -> None:
        self.threshold = threshold
        self.reset()

    def reset(self) -> None:
        self.scores: list[Any] = []
        self.labels: list[int] = []

    def update(self, scores: Any, labels: Any) -> None:
        s = _as_tensor(scores, torch.float64)
        _check_finite(s, "scores")
        self.scores += s.tolist()
        self.labels += _as_tensor(labels, torch.long).reshape(-1).tolist()

    def merge(self, other: ClassificationEvaluator) -> None:
        self.scores += other.scores
        self.labels += other.labels

    def compute(self) -> dict[str, Any]:
        scores = np.asarray(self.scores, dtype=np.float64)
        labels = np.asarray(self.labels, dtype=np.int64)
        keep = labels >= 0
        scores, labels = scores[keep], labels[keep]
        notes: list[str] = []
        if scores.ndim == 2:  # class probabilities: manipulated = not class 0
            pred = scores.argmax(1)
            k = scores.shape[1]
            binary_scores = manipulated_probability(scores, class_dim=1)
        else:
            pred = (scores > self.threshold).astype(np.int64)
            k = 2
            binary_scores = scores
        k = max(k, int(labels.max()) + 1 if len(labels) else 2)
        cm = np.zeros((k, k), dtype=np.int64)
        np.add.at(cm, (labels, pred), 1)
        bl, bp = labels > 0, pred > 0
        tp, tn = int((bl & bp).sum()), int((~bl & ~bp).sum())
        fp, fn = int((~bl & bp).sum()), int((bl & ~bp).sum())
        if len(labels) and 0 < bl.sum() < len(labels):
            auc: float | None = float(roc_auc_score(bl, binary_scores))
        else:
            auc = None
            notes.append("auc undefined: only one class present")
        precision, recall = _ratio(tp, tp + fp), _ratio(tp, tp + fn)
        return {
            "num_images": len(labels),
            "auc": auc,
            "accuracy": _ratio(int((pred == labels).sum()), len(labels)),
            "precision": precision,
            "recall": recall,
            "f1": harmonic(precision, recall),
            "mcc": _mcc(tp, fp, fn, tn),
            "fpr": _ratio(fp, fp + tn),
            "threshold": self.threshold,
            "confusion_matrix": cm.tolist(),
            "notes": notes,
        }
