"""What the networks' outputs mean as probabilities: the one home of these conventions.

Why one module: every number a user reads (maps, image scores, classifier scores,
calibration, int8 checks) must agree on how logits become probabilities and on what
"manipulated" means when a model has several classes: every class but 0 (pristine), so
P(manipulated) = 1 − P(pristine); with three classes (pristine, tampered, desensitised)
where an evaluation counts desensitised regions as not manipulated, P(tampered).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

PRISTINE = 0  # the class index of untouched pixels / authentic images
TAMPERED = 1  # three classes: the class index of tampered pixels / images
# the desensitised policies under which a desensitised region is not a manipulation
DESENSITISED_NOT_MANIPULATED = ("negative", "ignore")
# What a score is, as thresholds record it: a threshold chosen on one means nothing on
# the other. Every score was 1 − P(pristine) before three-class models were scored under
# these policies, so thresholds that do not say were chosen on it.
NOT_PRISTINE = "1 - P(pristine)"
TAMPERED_ONLY = "P(tampered)"
SCORE_RULES = (NOT_PRISTINE, TAMPERED_ONLY)


def score_rule(classes: int, desensitised: str | None) -> str:
    """The score :func:`manipulated_probability` gives for ``classes`` classes (map
    classes, or a classifier's image classes) under the ``desensitised`` policy."""
    if classes == 3 and desensitised in DESENSITISED_NOT_MANIPULATED:
        return TAMPERED_ONLY
    return NOT_PRISTINE


def classifier_score_rule(head: str, num_image_classes: int, desensitised: str | None) -> str:
    """:func:`score_rule` of a classifier's image score: the max head's is one map's
    maximum, the linear head's comes from its ``num_image_classes`` image classes."""
    return score_rule(num_image_classes if head == "linear" else 1, desensitised)


Probs = TypeVar("Probs", np.ndarray, torch.Tensor)


def probabilities(logits: torch.Tensor, class_dim: int = 1) -> torch.Tensor:
    """Sigmoid for one channel, softmax over classes otherwise (fp32)."""
    logits = logits.float()
    if logits.shape[class_dim] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=class_dim)


def manipulated_probability(probs: Probs, class_dim: int, desensitised: str = "positive") -> Probs:
    """P(manipulated) with the class axis removed: the probability itself for one class,
    else 1 − P(pristine); with three classes and ``desensitised`` ``negative`` or
    ``ignore``, P(tampered): the evaluation's labels do not count a desensitised region
    as manipulated, so its probability must not raise the score. Takes numpy arrays and
    tensors alike."""

    def take(index: int) -> Probs:
        if isinstance(probs, torch.Tensor):
            return probs.select(class_dim, index)
        return np.take(probs, index, axis=class_dim)

    classes = probs.shape[class_dim]
    if classes == 1:
        return take(PRISTINE)  # the one channel: P(manipulated) itself
    if score_rule(classes, desensitised) == TAMPERED_ONLY:
        return take(TAMPERED)
    return 1.0 - take(PRISTINE)
