"""What differs between the three training scripts: model, loss, and metrics.

The engine (:mod:`common.training.engine`) never special-cases a task; it calls these methods.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from common.core.scores import NOT_PRISTINE, classifier_score_rule, manipulated_probability
from common.core.user_errors import UsageError, clip
from common.data.masks import IGNORE
from common.evaluation.metrics import (
    ClassificationEvaluator,
    LocalizationEvaluator,
    ThreeClassEvaluator,
)
from common.inference.crops import Window, manipulated_score, strongest_crop
from common.training.losses import MVSSLoss, ThreeClassLoss
from models import MVSSClsOutput, WeightsError, get_mvss, get_mvss_cls, load_weights


class Task(Protocol):
    """What a training script supplies (see :mod:`common.training.tasks`)."""

    name: str
    nclass: int
    criterion: Any  # a loss from common.training.losses; its ``terms`` name the log's columns
    score: str  # what validation's maps and scores are (common.core.scores.SCORE_RULES)

    def build_model(self, cfg: dict[str, Any]) -> nn.Module: ...
    def model_config(self, cfg: dict[str, Any]) -> dict[str, Any]: ...
    def loss(self, outputs: Any, batch: dict[str, Any]) -> dict[str, torch.Tensor]: ...
    def new_evaluator(self) -> Any: ...
    def eval_update(self, evaluator: Any, outputs: Any, batch: dict[str, Any]) -> None: ...
    def eval_size(self, cfg: dict[str, Any]) -> int | None: ...
    def val_outputs(self, forward: Any, batch: dict[str, Any]) -> Any: ...
    def threshold_update(self, collector: Any, outputs: Any, batch: dict[str, Any]) -> None: ...


def _build(factory: Any, cfg: dict[str, Any], **kwargs: Any) -> nn.Module:
    with warnings.catch_warnings():
        if cfg.get("init") or cfg.get("resume"):
            warnings.simplefilter("ignore")  # random init is replaced by checkpoint weights
        return factory(
            backbone=cfg["backbone"], pretrained_base=cfg.get("pretrained_base"), **kwargs
        )


Forward = Callable[[torch.Tensor], Any]


class _Validation:
    """How a task validates: on the whole image, resized to ``val_size`` when given, else
    to the training size; at its own size when training takes crops (a crop-trained model
    sees pixels at their own scale, so resizing would judge it on resampled traces)."""

    score = NOT_PRISTINE  # what validation's maps and scores are (kept with its thresholds)

    def eval_size(self, cfg: dict[str, Any]) -> int | None:
        """Validation input size (None: the image as it is, one image per batch)."""
        if cfg.get("val_size"):
            return cfg["val_size"]
        return None if cfg.get("crop") else cfg["size"]

    def val_outputs(self, forward: Forward, batch: dict[str, Any]) -> Any:
        """Model outputs for a validation batch (``forward`` runs the model)."""
        return forward(batch["image"])


class LocalizationTask(_Validation):
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
        return self.criterion(
            outputs.edge, outputs.seg, batch["mask"], batch["edge"], batch["label"]
        )

    def new_evaluator(self) -> LocalizationEvaluator:
        return LocalizationEvaluator()

    def eval_update(self, evaluator: Any, outputs: Any, batch: dict[str, Any]) -> None:
        probs = torch.sigmoid(outputs.seg.float())[:, 0]
        evaluator.update(probs, batch["mask"][:, 0], batch["label"])

    def threshold_update(self, collector: Any, outputs: Any, batch: dict[str, Any]) -> None:
        probs = torch.sigmoid(outputs.seg.float())[:, 0]
        collector.update_maps(probs.cpu().numpy(), batch["mask"][:, 0].numpy(), batch["label"])


class ThreeClassTask(_Validation):
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
        return self.criterion(
            outputs.edge, outputs.seg, batch["mask"], batch["edge"], batch["label"]
        )

    def new_evaluator(self) -> ThreeClassEvaluator:
        return ThreeClassEvaluator()

    def eval_update(self, evaluator: Any, outputs: Any, batch: dict[str, Any]) -> None:
        evaluator.update(torch.softmax(outputs.seg.float(), dim=1), batch["mask"])

    def threshold_update(self, collector: Any, outputs: Any, batch: dict[str, Any]) -> None:
        """On the merged map (P(manipulated) = 1 − P(pristine)), as the script scores it."""
        merged = manipulated_probability(torch.softmax(outputs.seg.float(), dim=1), 1)
        classes = batch["mask"].numpy()
        binary = np.where(classes == IGNORE, IGNORE, classes > 0).astype(np.int64)
        collector.update_maps(merged.cpu().numpy(), binary, batch["label"])


class ClassificationTask(_Validation):
    """get_mvss_cls on crops: Dice on seg and edge for manipulated crops, and an image
    loss for all (BCE on the pooled score, or cross-entropy with the linear head).

    With ``crop: true`` validation scores whole images the way ``infer_mvss_cls.py``
    does: crops of ``size`` at stride ``size``, the image represented by its most
    manipulated crop, so ``best.pt`` is picked on the regime the model is used in.
    """

    name = "classification"
    nclass = 1

    def __init__(self, cfg: dict[str, Any]) -> None:
        if cfg["crop"] and cfg.get("val_size"):
            raise UsageError(
                "the classifier trained on crops validates as infer_mvss_cls.py scores: "
                "crops of size over the whole image, never resized",
                f"--val_size {cfg['val_size']}",
                "leave val_size unset (null) with crop: true",
            )
        self.crop = cfg["size"] if cfg["crop"] else None
        self.crops_per_forward = cfg["batch_size"]
        self.head = cfg["head"]
        self.num_image_classes = cfg["num_image_classes"]
        # what a desensitised-only image is: its labels and the image score follow it
        self.desensitised = cfg["desensitised"]
        self.score = classifier_score_rule(self.head, self.num_image_classes, self.desensitised)
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
        edge, seg, cls = outputs.edge, outputs.seg, outputs.cls
        linear = self.head == "linear"
        return self.criterion(
            edge,
            seg,
            batch["mask"],
            batch["edge"],
            batch["label"],
            image_logits=cls if linear else None,
            image_target=self.image_target(batch) if linear else None,
        )

    def val_outputs(self, forward: Forward, batch: dict[str, Any]) -> Any:
        if self.crop is None:
            return forward(batch["image"])
        rows = []
        for image in batch["image"]:  # at least MIN_SIDE per side (the eval transform)
            h, w = image.shape[-2:]

            def crops_of(windows: list[Window], image: torch.Tensor = image) -> torch.Tensor:
                return torch.stack([image[:, y0:y1, x0:x1] for y0, x0, y1, x1 in windows])

            best, _ = strongest_crop(
                lambda x: forward(x).cls,
                crops_of,
                h,
                w,
                self.crop,
                self.crop,
                self.crops_per_forward,
                self.desensitised,
            )
            rows.append(best)
        return MVSSClsOutput(None, None, torch.stack(rows))  # the image outputs only

    def new_evaluator(self) -> ClassificationEvaluator:
        return ClassificationEvaluator()

    def eval_update(self, evaluator: Any, outputs: Any, batch: dict[str, Any]) -> None:
        # the image's score and binary label, as infer_mvss_cls.py scores it: best.pt is
        # chosen on the numbers inference reports (three image classes included)
        scores = manipulated_score(outputs.cls, self.desensitised)
        evaluator.update(scores, batch["label"])

    def threshold_update(self, collector: Any, outputs: Any, batch: dict[str, Any]) -> None:
        scores = manipulated_score(outputs.cls, self.desensitised)
        collector.update_scores(scores.cpu().numpy(), batch["label"])


def initial_model(task: Task, cfg: dict[str, Any], log: logging.Logger | None) -> nn.Module:
    """The task's network, from ``pretrained_base`` and ``init`` when given; weights
    that cannot be read, or that share nothing with the network, are user errors."""
    try:
        model = task.build_model(cfg)
    except WeightsError as exc:
        raise UsageError(
            f"cannot use these ImageNet weights: {clip(exc.reason)}",
            f"--pretrained_base {cfg['pretrained_base']}",
        ) from exc
    if cfg.get("init"):
        where = f"--init {cfg['init']}"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the partial-load note: logged below
                report = load_weights(model, cfg["init"], strict=False)
        except WeightsError as exc:
            raise UsageError(f"cannot read this checkpoint: {clip(exc.reason)}", where) from exc
        fitted = len(model.state_dict()) - len(report.missing) - len(report.mismatched)
        if fitted == 0:
            raise UsageError(
                "this checkpoint has no weights for this network", where, report.describe()
            )
        if log is not None:
            level = logging.INFO if report.ok else logging.WARNING
            log.log(level, "initialised from %s (%s)", cfg["init"], report.describe())
    return model
