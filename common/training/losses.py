"""MVSS-Net's multi-view multi-scale supervision, and the three-class variant.

Losses are computed in fp32 even under autocast (the inputs are cast first).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from common.data.masks import IGNORE

_DICE_EPS = 1e-6


def dice_loss(prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``1 − 2ΣGS / (ΣG² + ΣS²)`` over the whole tensor (the paper's Dice)."""
    prob = prob.float()
    target = target.float()
    inter = (prob * target).sum()
    denom = (prob * prob).sum() + (target * target).sum()
    return 1.0 - 2.0 * inter / (denom + _DICE_EPS)


def graph_zero(t: torch.Tensor) -> torch.Tensor:
    """A zero that depends on every element of ``t``: a term with nothing to score keeps
    every parameter behind ``t`` in the step (with a zero gradient). DDP needs that: a
    parameter that gets no gradient on one process while it gets one on another puts
    the processes' gradient reductions out of step (a crash on gloo, a hang on NCCL).
    The sigmoid keeps the zero finite even where ``t`` overflows."""
    return torch.sigmoid(t.float()).sum() * 0.0


def manipulated_dice(
    logits: torch.Tensor,
    target: torch.Tensor,
    manipulated: torch.Tensor,
    valid: torch.Tensor | None = None,
) -> torch.Tensor:
    """Dice of ``sigmoid(logits)`` against ``target`` over the manipulated samples only,
    and over the ``valid`` pixels when given (ignored pixels count neither way). A batch
    without manipulated samples gives :func:`graph_zero`."""
    if not manipulated.any():
        return graph_zero(logits)
    prob = torch.sigmoid(logits[manipulated].float())
    target = target[manipulated].float()
    if valid is not None:
        keep = valid[manipulated]
        prob, target = prob * keep, target * keep
    return dice_loss(prob, target)


def image_logit(seg_logits: torch.Tensor) -> torch.Tensor:
    """Image-level logit: global max of the seg logits (sigmoid is monotone, so this is
    the logit of the max of the sigmoid map; BCE-with-logits applies the one sigmoid)."""
    return seg_logits.float().flatten(1).amax(dim=1)


def image_bce(seg_logits: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
    """BCE on the global-max score over the samples with a label (``label`` ≥ 0; −1
    marks a sample left out of the image term, e.g. desensitised-only under ``ignore``)."""
    keep = label >= 0
    if not keep.any():
        return graph_zero(seg_logits)
    logits = image_logit(seg_logits)
    if not keep.all():
        logits, label = logits[keep], label[keep]
    return F.binary_cross_entropy_with_logits(logits, (label > 0).float())


def image_cross_entropy(image_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a learned image head over the samples with a target ≥ 0."""
    keep = target >= 0
    if not keep.any():
        return graph_zero(image_logits)
    return F.cross_entropy(image_logits.float()[keep], target[keep])


def pixel_bce_loss(
    seg_logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor | None
) -> torch.Tensor:
    """Mean per-pixel BCE over all images, over the ``valid`` pixels when given."""
    if valid is None:
        return F.binary_cross_entropy_with_logits(seg_logits.float(), target.float())
    bce = F.binary_cross_entropy_with_logits(seg_logits.float(), target, reduction="none")
    return (bce * valid).sum() / valid.sum().clamp(min=1.0)


@dataclass
class MVSSLoss:
    """``α·L_seg + β·L_clf + (1 − α − β)·L_edge`` (α = 0.16, β = 0.04).

    Pixel (seg) and edge Dice use only the manipulated samples of the batch; authentic
    images contribute only the image-level BCE (a batch with no manipulated sample keeps
    the Dice terms in the graph at zero weight, see :func:`manipulated_dice`). Returns a
    dict with ``loss`` and its parts.

    ``pixel_bce`` (default 0, i.e. the paper's loss) adds that weight × a per-pixel BCE over
    *all* images. Why it exists: the image term's gradient reaches one pixel per image
    (the max), and Dice has no gradient on an empty mask, so from random initialisation
    the map learns to stay low on authentic images very slowly; a dense term fixes that
    for short runs (the demo recipe).
    """

    alpha: float = 0.16
    beta: float = 0.04
    pixel_bce: float = 0.0

    @property
    def terms(self) -> tuple[str, ...]:
        """The keys :meth:`__call__` returns (a training log's ``train_<key>`` columns)."""
        return ("loss", "seg", "clf", "edge") + (("pixel_bce",) if self.pixel_bce > 0 else ())

    def __post_init__(self) -> None:
        if not (0 <= self.alpha <= 1 and 0 <= self.beta <= 1 and self.alpha + self.beta <= 1):
            raise ValueError(f"need 0 ≤ α, β and α + β ≤ 1; got α={self.alpha}, β={self.beta}")

    def __call__(
        self,
        edge_logits: torch.Tensor,
        seg_logits: torch.Tensor,
        mask: torch.Tensor,
        edge: torch.Tensor,
        label: torch.Tensor,
        image_logits: torch.Tensor | None = None,
        image_target: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """``mask`` and ``edge`` hold {0, 1}, and :data:`~common.data.masks.IGNORE` for pixels
        left out (the ``ignore`` desensitised policy); ``label`` 1 / 0, or −1 for a sample left
        out of the image term. With ``image_logits`` (a learned image head) the image
        term is cross-entropy against ``image_target`` instead of the global-max BCE."""
        label = label.to(seg_logits.device)
        manipulated = label > 0
        mask = mask.to(seg_logits.device).float()
        ignored = mask == IGNORE
        valid = None
        if ignored.any():
            valid = (~ignored).float()
            mask = mask * valid
        seg_loss = manipulated_dice(seg_logits, mask, manipulated, valid)
        edge = edge.to(edge_logits.device).float()
        edge_valid = None
        if (edge == IGNORE).any():  # around desensitised regions under ``ignore``
            edge_valid = (edge != IGNORE).float()
            edge = edge * edge_valid
        edge_loss = manipulated_dice(edge_logits, edge, manipulated, edge_valid)
        if image_logits is None:
            clf_loss = image_bce(seg_logits, label)
        else:
            assert image_target is not None, "a learned image head needs image_target"
            clf_loss = image_cross_entropy(image_logits, image_target.to(image_logits.device))
        gamma = 1.0 - self.alpha - self.beta
        total = self.alpha * seg_loss + self.beta * clf_loss + gamma * edge_loss
        parts = {"seg": seg_loss, "clf": clf_loss, "edge": edge_loss}
        if self.pixel_bce > 0:
            bce = pixel_bce_loss(seg_logits, mask, valid)
            total = total + self.pixel_bce * bce
            parts["pixel_bce"] = bce
        return {"loss": total, **parts}


def multiclass_dice_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean over classes of the Dice loss between softmax maps and one-hot targets."""
    prob = torch.softmax(logits.float(), dim=1)
    onehot = F.one_hot(target.long(), prob.shape[1]).permute(0, 3, 1, 2).float()
    losses = [dice_loss(prob[:, c], onehot[:, c]) for c in range(prob.shape[1])]
    return torch.stack(losses).mean()


@dataclass
class ThreeClassLoss:
    """The seed's loss: ``seg_weight × multi-class Dice + edge_weight × edge Dice``
    (0.2 / 0.8), plus ``ce_weight ×`` cross-entropy when > 0. ``target`` holds
    {0 pristine, 1 tampered, 2 desensitised}; the edge target is that of classes 1 ∪ 2."""

    seg_weight: float = 0.2
    edge_weight: float = 0.8
    ce_weight: float = 0.0

    @property
    def terms(self) -> tuple[str, ...]:
        """The keys :meth:`__call__` returns (a training log's ``train_<key>`` columns)."""
        return ("loss", "seg", "edge") + (("ce",) if self.ce_weight > 0 else ())

    def __call__(
        self,
        edge_logits: torch.Tensor,
        seg_logits: torch.Tensor,
        target: torch.Tensor,
        edge: torch.Tensor,
        label: torch.Tensor,
    ) -> dict[str, torch.Tensor]:
        seg_loss = multiclass_dice_loss(seg_logits, target)
        edge_loss = manipulated_dice(edge_logits, edge, label.to(seg_logits.device) > 0)
        total = self.seg_weight * seg_loss + self.edge_weight * edge_loss
        parts = {"seg": seg_loss, "edge": edge_loss}
        if self.ce_weight > 0:
            ce = F.cross_entropy(seg_logits.float(), target.long())
            total = total + self.ce_weight * ce
            parts["ce"] = ce
        return {"loss": total, **parts}
