"""Three-class localisation (pristine / tampered / desensitised): the seed scripts'
per-image table (docs/three-class-and-classifier.md)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch

from common.core.release import MAP_LEVELS
from common.evaluation.metrics.counts import (
    DEFAULT_BINS,
    EMPTY_F1_RULES,
    as_tensor,
    auc_from_histograms,
    bin_index,
    check_finite,
    f1_from_counts,
    mcc,
    ratio,
)

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
        probs = as_tensor(probs, torch.float32)
        check_finite(probs, "probability maps")
        target = as_tensor(target, torch.long)
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
            idx = bin_index(probs[:, c].flatten(), self.bins)  # dataset-level AUC
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
            iou = ratio(tp, tp + fp + fn)
            if iou is not None:
                ious.append(iou)
            recall = ratio(tp, tp + fn)
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
                    f"f1_{name}_micro": ratio(2 * tp, 2 * tp + fp + fn),
                    f"iou_{name}_micro": iou,
                    f"mcc_{name}_micro": mcc(tp, fp, fn, tn),
                    f"auc_{name}_micro": None if math.isnan(auc) else auc,
                    f"fpr_{name}_micro": ratio(fp, fp + tn),
                }
            )
        result["miou_micro"] = float(np.mean(ious)) if ious else None
        result["pixel_accuracy_micro"] = ratio(cm.trace().item(), total)
        result["mean_pixel_accuracy_micro"] = float(np.mean(recalls)) if recalls else None
        result["confusion_matrix"] = cm.long().tolist()
        result["notes"] = notes
        return result
