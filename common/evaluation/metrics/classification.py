"""Image-level classification metrics for the classifier (docs/three-class-and-classifier.md)."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from common.core.scores import manipulated_probability
from common.evaluation.metrics.counts import as_tensor, check_finite, f1_of, mcc, ratio


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
        s = as_tensor(scores, torch.float64)
        check_finite(s, "scores")
        self.scores += s.tolist()
        self.labels += as_tensor(labels, torch.long).reshape(-1).tolist()

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
        precision, recall = ratio(tp, tp + fp), ratio(tp, tp + fn)
        f1, matthews, fpr = f1_of(tp, fp, fn), mcc(tp, fp, fn, tn), ratio(fp, fp + tn)
        if len(labels):
            notes += undefined_notes(precision, recall, f1, matthews, fpr)
        return {
            "num_images": len(labels),
            "auc": auc,
            "accuracy": ratio(int((pred == labels).sum()), len(labels)),
            "precision": precision,
            "recall": recall,
            "f1": f1,
            "mcc": matthews,
            "fpr": fpr,
            "threshold": self.threshold,
            "confusion_matrix": cm.tolist(),
            "notes": notes,
        }


def undefined_notes(
    precision: float | None,
    recall: float | None,
    f1: float | None,
    matthews: float | None,
    fpr: float | None,
) -> list[str]:
    """Why each undefined value is null (docs/metrics.md: never a silent null, never 0)."""
    notes = []
    if precision is None:
        notes.append("precision undefined: no image was flagged manipulated")
    if recall is None:
        notes.append("recall undefined: no manipulated images")
    if f1 is None:
        notes.append("f1 undefined: no manipulated images and none flagged")
    if matthews is None:
        notes.append(
            "mcc undefined: a row or column of the confusion matrix is empty (one class "
            "present, or one decision for every image; scikit-learn reports 0)"
        )
    if fpr is None:
        notes.append("fpr undefined: no authentic images")
    return notes
