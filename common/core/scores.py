"""What the networks' outputs mean as probabilities: the one home of these conventions.

Why one module: every number a user reads (maps, image scores, classifier scores,
calibration, int8 checks) must agree on how logits become probabilities and on what
"manipulated" means when a model has several classes: every class but 0 (pristine), so
P(manipulated) = 1 − P(pristine).
"""

from __future__ import annotations

from typing import TypeVar

import numpy as np
import torch

PRISTINE = 0  # the class index of untouched pixels / authentic images

Probs = TypeVar("Probs", np.ndarray, torch.Tensor)


def probabilities(logits: torch.Tensor, class_dim: int = 1) -> torch.Tensor:
    """Sigmoid for one channel, softmax over classes otherwise (fp32)."""
    logits = logits.float()
    if logits.shape[class_dim] == 1:
        return torch.sigmoid(logits)
    return torch.softmax(logits, dim=class_dim)


def manipulated_probability(probs: Probs, class_dim: int) -> Probs:
    """P(manipulated) with the class axis removed: the probability itself for one class,
    else 1 − P(pristine). Takes numpy arrays and tensors alike."""
    if isinstance(probs, torch.Tensor):
        first = probs.select(class_dim, PRISTINE)
    else:
        first = np.take(probs, PRISTINE, axis=class_dim)
    return first if probs.shape[class_dim] == 1 else 1.0 - first
