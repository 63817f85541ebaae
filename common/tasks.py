"""What differs between the three training scripts: model, loss, and metrics.

The engine (:mod:`common.engine`) never special-cases a task; it calls these methods.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from common.losses import MVSSLoss, ThreeClassLoss
from common.metrics import ClassificationEvaluator, LocalizationEvaluator, ThreeClassEvaluator
from models import get_mvss, get_mvss_cls


def _build(factory: Any, cfg: dict[str, Any], **kwargs: Any) -> nn.Module:
    with warnings.catch_warnings():
        if cfg.get("init"):
            warnings.simplefilter("ignore")  # random init is replaced by --init weights
        return factory(
            backbone=cfg["backbone"], pretrained_base=cfg.get("pretrained_base"), **kwargs
        )


class LocalizationTask:
    """Binary localisation with MVSS-Net's multi-view multi-scale loss."""

    name = "localization"
    nclass = 1

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.criterion = MVSSLoss(cfg["alpha"], cfg["beta"], cfg.get("pixel_bce", 0.0))

    def build_model(self, cfg: dict[str, Any]) -> nn.Module:
        return _build(get_mvss, cfg, nclass=1)

    def model_config(self, cfg: dict[str, Any]) -> dict[str, Any]:
        return {"backbone": cfg["backbone"], "nclass": 1}

    def loss(self, outputs: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        edge, seg = outputs[0], outputs[1]
        return self.criterion(edge, seg, batch["mask"], batch["edge"], batch["label"])

    def new_evaluator(self) -> LocalizationEvaluator:
        return LocalizationEvaluator()

    def eval_update(self, evaluator: Any, outputs: Any, batch: dict[str, Any]) -> None:
        probs = torch.sigmoid(outputs[1].float())[:, 0]
        evaluator.update(probs, batch["mask"][:, 0], batch["label"])


class ThreeClassTask:
    """Three-class localisation (0 pristine, 1 tampered, 2 desensitised), the seed's loss."""

    name = "three_class"
    nclass = 3

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.criterion = ThreeClassLoss(cfg["seg_weight"], cfg["edge_weight"], cfg["ce_weight"])

    def build_model(self, cfg: dict[str, Any]) -> nn.Module:
        return _build(get_mvss, cfg, nclass=3)

    def model_config(self, cfg: dict[str, Any]) -> dict[str, Any]:
        return {"backbone": cfg["backbone"], "nclass": 3}

    def loss(self, outputs: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        return self.criterion(outputs[0], outputs[1], batch["mask"], batch["edge"], batch["label"])

    def new_evaluator(self) -> ThreeClassEvaluator:
        return ThreeClassEvaluator()

    def eval_update(self, evaluator: Any, outputs: Any, batch: dict[str, Any]) -> None:
        evaluator.update(torch.softmax(outputs[1].float(), dim=1), batch["mask"])


class ClassificationTask:
    """get_mvss_cls on crops: Dice on seg and edge for manipulated crops, and an image
    loss for all (BCE on the pooled score, or cross-entropy with the linear head)."""

    name = "classification"
    nclass = 1

    def __init__(self, cfg: dict[str, Any]) -> None:
        self.head = cfg["head"]
        self.num_image_classes = cfg["num_image_classes"]
        self.criterion = MVSSLoss(alpha=cfg["alpha"], beta=cfg["beta"])

    def build_model(self, cfg: dict[str, Any]) -> nn.Module:
        return _build(get_mvss_cls, cfg, head=self.head, num_image_classes=self.num_image_classes)

    def model_config(self, cfg: dict[str, Any]) -> dict[str, Any]:
        return {
            "backbone": cfg["backbone"],
            "nclass": 1,
            "head": self.head,
            "num_image_classes": self.num_image_classes,
        }

    def image_target(self, batch: dict[str, Any]) -> torch.Tensor:
        """Binary label, or with 3 image classes what the mask shows: 0 authentic,
        1 tampered, 2 desensitised only."""
        if self.head == "linear" and self.num_image_classes == 3:
            return batch["image_class"]
        return batch["label"]

    def loss(self, outputs: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        edge, seg, cls = outputs
        parts = self.criterion(edge, seg, batch["mask"], batch["edge"], batch["label"])
        if self.head == "linear":
            ce = F.cross_entropy(cls.float(), self.image_target(batch).to(cls.device))
            c = self.criterion
            gamma = 1.0 - c.alpha - c.beta
            parts["clf"] = ce
            parts["loss"] = c.alpha * parts["seg"] + c.beta * ce + gamma * parts["edge"]
        return parts

    def new_evaluator(self) -> ClassificationEvaluator:
        return ClassificationEvaluator()

    def eval_update(self, evaluator: Any, outputs: Any, batch: dict[str, Any]) -> None:
        cls = outputs[2].float()
        if self.head == "linear":
            cls = torch.softmax(cls, dim=1)
        evaluator.update(cls, self.image_target(batch))
