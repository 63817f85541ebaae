"""The fast inference paths give the plain path's maps within the documented tolerances."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from common.fast import fold_batchnorm, optimize_for_inference
from common.photos import bundled_photos
from common.synthetic import SyntheticConfig, make_sample
from common.transforms import normalize_bgr_batch
from common.winograd import WinogradConv2d, winograd_eligible
from tests.conftest import build


@pytest.fixture(scope="module")
def real_inputs():
    photos = bundled_photos()
    rng = np.random.default_rng(0)
    cfg = SyntheticConfig(size=128, authentic_ratio=0.3)
    images = np.stack([make_sample(photos, cfg, rng).image for _ in range(4)])
    return normalize_bgr_batch(torch.from_numpy(images))


@pytest.fixture(scope="module")
def calibrated(real_inputs):
    """Random weights with BatchNorm statistics from real images, attention switched on."""
    torch.manual_seed(0)
    net = build(backbone="resnet18")
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None
    net.train()
    with torch.no_grad():
        net(real_inputs)
        net.head.pam.alpha.fill_(0.5)
        net.head.cam.beta.fill_(0.5)
    return net.eval()


@pytest.fixture(scope="module")
def plain():
    """Random initialisation, as the release's model is timed and compared elsewhere."""
    torch.manual_seed(0)
    return build(backbone="resnet18").eval()


def _probs(net, x):
    with torch.inference_mode():
        return torch.sigmoid(net(x)[1].float())


def test_fold_batchnorm_counts_and_matches(calibrated, real_inputs):
    import copy

    folded = copy.deepcopy(calibrated)
    n = fold_batchnorm(folded)
    assert n > 40
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    torch.testing.assert_close(
        _probs(folded, real_inputs), _probs(calibrated, real_inputs), atol=1e-4, rtol=1e-4
    )


def test_fast_fp32_equals_plain(calibrated, real_inputs):
    fast = optimize_for_inference(calibrated)
    with torch.inference_mode():
        e_ref, s_ref = calibrated(real_inputs)
        e_fast, s_fast = fast(real_inputs)
    torch.testing.assert_close(s_fast, s_ref, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(e_fast, e_ref, atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("channels_last", [False, True])
def test_fast_bf16_within_tolerances(plain, real_inputs, channels_last):
    fast = optimize_for_inference(plain, torch.bfloat16, channels_last)
    ref, got = _probs(plain, real_inputs), _probs(fast, real_inputs)
    diff = (got - ref).abs() * 255
    assert ref.std() > 0.01  # the maps are not saturated constants
    assert diff.mean() <= 1.0 and diff.max() <= 16.0
    assert ((got > 0.5) == (ref > 0.5)).float().mean() >= 0.999


def test_autocast_bf16_within_tolerances(plain, real_inputs):
    ref = _probs(plain, real_inputs)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = _probs(plain, real_inputs)
    diff = (got - ref).abs() * 255
    assert diff.mean() <= 1.0 and diff.max() <= 16.0


def test_original_model_untouched(calibrated):
    before = {k: v.clone() for k, v in calibrated.state_dict().items()}
    optimize_for_inference(calibrated, torch.bfloat16, True)
    after = calibrated.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in calibrated.modules())


@pytest.mark.parametrize(
    ("size", "bias"), [((8, 8), True), ((7, 10), False), ((1, 1), True), ((32, 30), True)]
)
def test_winograd_conv_equals_direct(size, bias):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(12, 5, 3, padding=1, bias=bias)
    x = torch.randn(2, 12, *size)
    got = WinogradConv2d(conv)(x)
    assert got.shape == (2, 5, *size)
    torch.testing.assert_close(got, conv(x), atol=1e-5, rtol=1e-5)


def test_winograd_refuses_other_convolutions():
    for conv in (
        torch.nn.Conv2d(4, 4, 3, stride=2, padding=1),
        torch.nn.Conv2d(4, 4, 3, padding=2, dilation=2),
        torch.nn.Conv2d(4, 4, 1),
        torch.nn.Conv2d(4, 4, 3, padding=1, groups=2),
    ):
        assert not winograd_eligible(conv)
        with pytest.raises(ValueError, match="3×3 stride-1"):
            WinogradConv2d(conv)


def test_winograd_paths_within_tolerances(calibrated, plain, real_inputs):
    fp32 = optimize_for_inference(calibrated, winograd=True, winograd_min_channels=256)
    n_wino = sum(isinstance(m, WinogradConv2d) for m in fp32.modules())
    assert n_wino >= 3  # the merged head entry and the two 1024→1024-style convolutions
    torch.testing.assert_close(
        _probs(fp32, real_inputs), _probs(calibrated, real_inputs), atol=1e-4, rtol=1e-4
    )
    fast = optimize_for_inference(
        plain, torch.bfloat16, True, winograd=True, winograd_min_channels=256
    )
    ref, got = _probs(plain, real_inputs), _probs(fast, real_inputs)
    diff = (got - ref).abs() * 255
    assert diff.mean() <= 1.0 and diff.max() <= 16.0
    assert ((got > 0.5) == (ref > 0.5)).float().mean() >= 0.999

    # the transformed kernels are bf16, the folded biases keep their fp32 values
    bf16_cal = optimize_for_inference(
        calibrated, torch.bfloat16, True, winograd=True, winograd_min_channels=256
    )
    biases = [
        (a.bias, b.bias)
        for a, b in zip(bf16_cal.modules(), fp32.modules(), strict=True)
        if isinstance(a, WinogradConv2d) and a.bias is not None
    ]
    assert biases and all(torch.equal(a, b) for a, b in biases)
    assert any(not torch.equal(a, a.bfloat16().float()) for a, _ in biases)  # not bf16 values
    kernels = [m.weight_t.dtype for m in bf16_cal.modules() if isinstance(m, WinogradConv2d)]
    assert kernels and all(d == torch.bfloat16 for d in kernels)
