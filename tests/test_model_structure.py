"""The network's shape contract and checkpoint compatibility."""

from __future__ import annotations

import pytest
import torch

from tests.conftest import build


def test_default_state_dict_matches_official_keys_and_shapes(default_model, reference_keys):
    ours = [(k, tuple(v.shape)) for k, v in default_model.state_dict().items()]
    assert len(reference_keys) == 800
    assert ours == reference_keys


def test_official_layout_loads_strict(default_model, reference_keys):
    fake = {k: torch.zeros(s) for k, s in reference_keys}
    fresh = build()
    fresh.load_state_dict(fake, strict=True)
    assert torch.count_nonzero(fresh.head.conv_p1[0].weight) == 0


def test_parameter_count_matches_release(default_model):
    total = sum(p.numel() for p in default_model.parameters())
    assert abs(total / 1e6 - 146.9) < 0.05


@pytest.mark.parametrize("size", [(64, 64), (96, 64), (100, 77), (130, 200), (128, 128)])
def test_output_shapes_any_size(tiny_model, size):
    with torch.inference_mode():
        edge, seg = tiny_model(torch.randn(2, 3, *size))
    c1 = size[0], size[1]
    for _ in range(2):  # conv1 then maxpool, each ceil-halving
        c1 = ((c1[0] + 1) // 2, (c1[1] + 1) // 2)
    assert seg.shape == (2, 1, *size)
    assert edge.shape == (2, 1, *c1)
    assert torch.isfinite(seg).all() and torch.isfinite(edge).all()


def test_default_model_shapes_non_multiple_of_16(default_model):
    with torch.inference_mode():
        edge, seg = default_model(torch.randn(1, 3, 72, 90))
    assert seg.shape == (1, 1, 72, 90)
    assert edge.shape == (1, 1, 18, 23)


def test_three_class_head_keeps_one_edge_channel():
    net = build(backbone="resnet18", nclass=3).eval()
    with torch.inference_mode():
        edge, seg = net(torch.randn(1, 3, 64, 80))
    assert seg.shape == (1, 3, 64, 80)
    assert edge.shape[1] == 1


@pytest.mark.parametrize("backbone", ["resnet18", "resnet34", "resnet101"])
def test_other_backbones_build(backbone):
    net = build(backbone=backbone)
    assert net.model.stage_channels[-1] in (512, 2048)
    if backbone == "resnet101":
        assert len(net.model.layer3) == 23


def test_unknown_backbone_lists_choices():
    with pytest.raises(ValueError, match="resnet50"):
        build(backbone="resnet51")


def test_aux_heads_and_no_noise_branch():
    net = build(backbone="resnet18", aux=True, constrain=False, sobel=False).eval()
    keys = net.state_dict().keys()
    assert not any(k.startswith(("noise_extractor", "constrain_conv", "sobel_")) for k in keys)
    assert any(k.startswith("head.conv_p3") for k in keys)
    with torch.inference_mode():
        out = net.forward_features(torch.randn(1, 3, 64, 64))
    assert out["aux_p"].shape == out["seg"].shape == (1, 1, 64, 64)


def test_eval_forward_is_deterministic(tiny_model):
    x = torch.randn(1, 3, 96, 96)
    with torch.inference_mode():
        a = tiny_model(x)
        b = tiny_model(x)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_gradients_reach_trainable_parameters_not_sobel():
    torch.manual_seed(0)
    net = build(backbone="resnet18", aux=False).train()
    # Non-zero attention gains so the attention convs get a gradient as well.
    with torch.no_grad():
        net.head.pam.alpha.fill_(0.5)
        net.head.cam.beta.fill_(0.5)
    edge, seg = net(torch.randn(2, 3, 64, 64))
    (edge.mean() + seg.mean()).backward()
    no_grad = [
        name
        for name, p in net.named_parameters()
        if p.requires_grad
        and (p.grad is None or not torch.any(p.grad != 0))
        and not name.startswith(("model.fc", "noise_extractor.model.fc"))
    ]
    assert no_grad == []
    sobel = [
        p for n, p in net.named_parameters() if n.startswith("sobel_") and n.endswith("0.weight")
    ]
    assert len(sobel) == 8
    assert all(not p.requires_grad and p.grad is None for p in sobel)


def test_sobel_weights_are_fixed_kernels(default_model):
    w = default_model.sobel_x3[0].weight
    assert w.shape == (1, 1024, 3, 3)
    expected = torch.tensor([[1.0, 0, -1], [2, 0, -2], [1, 0, -1]])
    assert torch.equal(w[0, 0], expected) and torch.equal(w[0, 777], expected)
    assert torch.equal(default_model.sobel_y1[0].weight[0, 5], expected.T)
