"""Binary localisation and image-level metrics, the release's definitions
(docs/metrics.md)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from common.data.masks import IGNORE
from common.evaluation.metrics.counts import (
    DEFAULT_BINS,
    EMPTY_F1_RULES,
    as_tensor,
    auc_from_histograms,
    best_f1_from_histograms,
    check_finite,
    check_unit_range,
    f1_from_counts,
    f1_of,
    harmonic,
    ratio,
)


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
    sens = ratio(tp, tp + fn)
    spec = ratio(tn, tn + fp)
    if sens is None and n:
        notes.append("image_sensitivity undefined: no manipulated images")
    if spec is None and n:
        notes.append("image_specificity undefined: no authentic images")
    precision = ratio(tp, tp + fp)
    return {
        "image_auc": auc,
        "image_accuracy": ratio(tp + tn, n),
        "image_sensitivity": sens,
        "image_specificity": spec,
        "image_f1": harmonic(sens, spec),
        "image_precision": precision,
        "image_recall": sens,
        "image_f1_precision_recall": f1_of(tp, fp, fn),
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
        probs = as_tensor(probs, torch.float32)
        if probs.ndim == 2:
            probs = probs[None]
        check_unit_range(probs)
        labels_t = as_tensor(labels, torch.long).reshape(-1)
        n = probs.shape[0]
        if labels_t.numel() != n:
            raise ValueError(f"{n} maps but {labels_t.numel()} labels")
        score_t = (
            probs.flatten(1).amax(1)
            if scores is None
            else as_tensor(scores, torch.float64).reshape(-1)
        )
        check_finite(score_t, "image scores")
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
        gt = as_tensor(masks)
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
            "pixel_f1_micro": ratio(2 * tp, 2 * tp + fp + fn),
            "pixel_iou_micro": ratio(tp, tp + fp + fn),
            "pixel_precision_micro": ratio(tp, tp + fp),
            "pixel_recall_micro": ratio(tp, tp + fn),
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
