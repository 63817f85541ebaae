"""Streaming evaluators with the release's metric definitions (see docs/metrics.md).

Each evaluator has ``update(...)`` per batch (vectorised, no full maps kept),
``merge(other)`` to combine shards (DDP), and ``compute()`` → a plain dict. Undefined
values (e.g. AUC with one class present) are ``None`` and explained under ``notes``;
never 0.
"""

from common.evaluation.metrics.classification import ClassificationEvaluator
from common.evaluation.metrics.counts import (
    DEFAULT_BINS,
    EMPTY_F1_RULES,
    auc_from_histograms,
    best_f1_from_histograms,
    f1_from_counts,
    harmonic,
)
from common.evaluation.metrics.localization import LocalizationEvaluator, image_level_metrics
from common.evaluation.metrics.three_class import CLASS_NAMES, ThreeClassEvaluator

__all__ = [
    "CLASS_NAMES",
    "DEFAULT_BINS",
    "EMPTY_F1_RULES",
    "ClassificationEvaluator",
    "LocalizationEvaluator",
    "ThreeClassEvaluator",
    "auc_from_histograms",
    "best_f1_from_histograms",
    "f1_from_counts",
    "harmonic",
    "image_level_metrics",
]
