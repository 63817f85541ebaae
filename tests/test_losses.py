"""The multi-view multi-scale loss and the three-class loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from common.training.losses import MVSSLoss, ThreeClassLoss, dice_loss, multiclass_dice_loss


def test_dice_perfect_and_disjoint():
    t = torch.zeros(1, 1, 4, 4)
    t[..., :2, :] = 1
    assert dice_loss(t, t).item() == pytest.approx(0.0, abs=1e-6)
    assert dice_loss(1 - t, t).item() == pytest.approx(1.0)


def test_mvss_loss_parts_and_weights():
    torch.manual_seed(0)
    seg = torch.randn(3, 1, 8, 8)
    edge = torch.randn(3, 1, 2, 2)
    mask = (torch.rand(3, 1, 8, 8) > 0.5).float()
    edge_gt = (torch.rand(3, 1, 2, 2) > 0.5).float()
    label = torch.tensor([1, 0, 1])
    out = MVSSLoss()(edge, seg, mask, edge_gt, label)
    m = label > 0
    seg_ref = dice_loss(torch.sigmoid(seg[m]), mask[m])
    edge_ref = dice_loss(torch.sigmoid(edge[m]), edge_gt[m])
    score = torch.sigmoid(seg).amax(dim=(1, 2, 3))
    clf_ref = F.binary_cross_entropy(score, label.float())  # one sigmoid, on the max
    assert out["seg"].item() == pytest.approx(seg_ref.item())
    assert out["edge"].item() == pytest.approx(edge_ref.item())
    assert out["clf"].item() == pytest.approx(clf_ref.item(), rel=1e-5)
    expected = 0.16 * seg_ref + 0.04 * clf_ref + 0.8 * edge_ref
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-5)


def test_authentic_only_batch_uses_image_term_only():
    seg = torch.randn(2, 1, 8, 8, requires_grad=True)
    edge = torch.randn(2, 1, 2, 2, requires_grad=True)
    out = MVSSLoss()(edge, seg, torch.zeros(2, 1, 8, 8), torch.zeros(2, 1, 2, 2), torch.zeros(2))
    assert out["seg"].item() == 0 and out["edge"].item() == 0
    out["loss"].backward()
    # the Dice terms stay in the graph at zero weight (DDP needs every parameter used)
    assert edge.grad is not None and edge.grad.abs().sum() == 0
    assert seg.grad.abs().sum() > 0


def test_loss_is_fp32_under_bf16_inputs():
    seg = torch.randn(2, 1, 8, 8).bfloat16()
    edge = torch.randn(2, 1, 2, 2).bfloat16()
    out = MVSSLoss()(edge, seg, torch.ones(2, 1, 8, 8), torch.ones(2, 1, 2, 2), torch.ones(2))
    assert out["loss"].dtype == torch.float32


def test_invalid_weights():
    with pytest.raises(ValueError):
        MVSSLoss(alpha=0.9, beta=0.2)


def test_three_class_loss():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 8, 8)
    target = torch.randint(0, 3, (2, 8, 8))
    edge = torch.randn(2, 1, 2, 2)
    edge_gt = torch.ones(2, 1, 2, 2)
    out = ThreeClassLoss(ce_weight=0.5)(edge, logits, target, edge_gt, torch.tensor([1, 0]))
    mdice = multiclass_dice_loss(logits, target)
    edge_ref = dice_loss(torch.sigmoid(edge[:1]), edge_gt[:1])
    ce = F.cross_entropy(logits, target)
    assert out["loss"].item() == pytest.approx(
        (0.2 * mdice + 0.8 * edge_ref + 0.5 * ce).item(), rel=1e-5
    )
    perfect = F.one_hot(target, 3).permute(0, 3, 1, 2).float() * 50
    assert multiclass_dice_loss(perfect, target).item() < 1e-4
