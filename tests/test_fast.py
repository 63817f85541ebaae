"""The fast inference paths give the plain path's maps within the documented tolerances."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from common.accel.fast_path import fold_batchnorm, optimize_for_inference
from common.accel.winograd import WinogradConv2d, transform_weight, winograd_eligible
from common.data.transforms import normalize_bgr_batch
from common.synth.forgery import SyntheticConfig, make_sample
from common.synth.photos import bundled_photos
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

    def winograd_layers(net):
        return [m for m in net.modules() if isinstance(m, WinogradConv2d)]

    biases = [
        (a.bias, b.bias)
        for a, b in zip(winograd_layers(bf16_cal), winograd_layers(fp32), strict=True)
        if a.bias is not None
    ]
    assert biases and all(torch.equal(a, b) for a, b in biases)
    assert any(not torch.equal(a, a.bfloat16().float()) for a, _ in biases)  # not bf16 values
    kernels = [m.weight_t.dtype for m in bf16_cal.modules() if isinstance(m, WinogradConv2d)]
    assert kernels and all(d == torch.bfloat16 for d in kernels)


@pytest.fixture(scope="module")
def trained():
    """A ResNet-18 MVSS-Net trained for a few dozen Adam steps on synthetic forgeries:
    real BatchNorm statistics, attention gains off zero, maps that follow the content."""
    torch.manual_seed(1)
    photos = bundled_photos()
    rng = np.random.default_rng(1)
    cfg = SyntheticConfig(size=96, authentic_ratio=0.3)
    samples = [make_sample(photos, cfg, rng) for _ in range(24)]
    images = normalize_bgr_batch(torch.from_numpy(np.stack([s.image for s in samples])))
    masks = torch.from_numpy(np.stack([s.classes > 0 for s in samples])).float()[:, None]
    net = build(backbone="resnet18")
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net.train()
    for step in range(30):
        idx = torch.arange(4) + 4 * (step % 6)
        _, seg = net(images[idx])
        loss = torch.nn.functional.binary_cross_entropy_with_logits(seg, masks[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return net.eval()


def _within_bars(ref, got, mean=1.0, peak=16.0, agreement=0.999):
    diff = (got - ref).abs() * 255
    assert ref.std() > 0.01  # the maps are not saturated constants
    assert diff.mean() <= mean, diff.mean()
    assert diff.max() <= peak, diff.max()
    assert ((got > 0.5) == (ref > 0.5)).float().mean() >= agreement


@pytest.mark.parametrize("size", [(8, 8), (7, 10), (1, 1), (13, 6)])
def test_winograd_4x4_equals_direct(size):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(12, 5, 3, padding=1)
    x = torch.randn(2, 12, *size)
    got = WinogradConv2d(conv, tile=4)(x)
    assert got.shape == (2, 5, *size)
    torch.testing.assert_close(got, conv(x), atol=1e-4, rtol=1e-4)


def test_winograd_bf16_rounding_bounded():
    """bf16 products: F(2×2) stays near a direct bf16 convolution; F(4×4)'s larger
    transform constants amplify the rounding (why it is not the default)."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(256, 64, 3, padding=1)
    x = torch.randn(1, 256, 16, 16).relu().contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        ref = conv(x)
        direct = torch.nn.functional.conv2d(
            x.bfloat16(), conv.weight.bfloat16(), conv.bias.bfloat16(), padding=1
        ).float()
        f2 = WinogradConv2d(conv, torch.bfloat16, 2)(x.bfloat16()).float()
        f4 = WinogradConv2d(conv, torch.bfloat16, 4)(x.bfloat16()).float()
    err = {k: (v - ref).abs().mean().item() for k, v in [("d", direct), ("2", f2), ("4", f4)]}
    assert err["2"] <= 3 * err["d"]
    assert err["2"] < err["4"] <= 20 * err["d"]


def test_winograd_layers_keep_their_dtypes_when_moved():
    conv = torch.nn.Conv2d(8, 8, 3, padding=1)
    layer = WinogradConv2d(conv, torch.bfloat16).to(torch.float32)
    assert layer.weight_t.dtype == torch.bfloat16 and layer.bias.dtype == torch.float32
    assert torch.equal(layer.bias, conv.bias.detach())


def test_mixed_attention_close_to_fp32():
    from common.accel.mixed_attention import mixed_attention
    from models.attention import ChannelAttention, PositionAttention

    torch.manual_seed(0)
    x = torch.randn(2, 64, 8, 8).relu().bfloat16().contiguous(memory_format=torch.channels_last)
    for block in (PositionAttention(64), ChannelAttention()):
        for p in block.parameters():
            if p.numel() == 1:
                p.data.fill_(0.7)
        block.eval()
        with torch.inference_mode():
            ref = block(x.float())
            got = mixed_attention(block, torch.bfloat16).to(torch.bfloat16)(x)
        assert got.dtype == torch.bfloat16
        rel = (got.float() - ref).abs().max() / ref.abs().max()
        assert rel < 0.02, (type(block).__name__, rel)


@pytest.mark.parametrize("tile", [2, 4])
def test_fastest_path_within_bars_on_trained_weights(trained, real_inputs, tile):
    fast = optimize_for_inference(
        trained, torch.bfloat16, True, winograd=True, winograd_tile=tile, winograd_min_channels=256
    )
    assert sum(isinstance(m, WinogradConv2d) for m in fast.modules()) >= 3
    _within_bars(_probs(trained, real_inputs), _probs(fast, real_inputs))


def test_int8_conv_matches_float_within_quantisation():
    from common.accel.int8 import Int8Conv2d, dequantize, quantize

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(16, 32, 3, padding=2, dilation=2)
    x = torch.randn(1, 16, 12, 12).relu().contiguous(memory_format=torch.channels_last)
    x_q = (float(x.max()) / 255, 0)
    ref = torch.relu(conv(x)).detach()
    out_q = (float(ref.max()) / 255, 0)
    layer = Int8Conv2d(conv, x_q, out_q, relu=True)
    got = dequantize(layer(quantize(x, *x_q)), *out_q, torch.float32)
    assert got.shape == ref.shape
    assert (got - ref).abs().max() <= 0.05 * ref.abs().max()


def test_int8_path_within_bars_on_trained_weights(trained, real_inputs):
    from common.accel.int8 import Int8ResNet, quantize_for_inference

    net = quantize_for_inference(trained, real_inputs[:2])
    assert sum(isinstance(m, Int8ResNet) for m in net.modules()) == 1  # the RGB view only
    assert isinstance(net.net.model, Int8ResNet)
    ref, got = _probs(trained, real_inputs), _probs(net, real_inputs)
    _within_bars(ref, got)
    again = quantize_for_inference(trained, qparams=net.qparams)  # from a saved calibration
    torch.testing.assert_close(_probs(again, real_inputs), got)


@pytest.mark.parametrize(
    "float_stages",
    [{}, {"rgb": (1,), "noise": (2, 3)}, {"rgb": (2, 4), "noise": (1, 2, 3, 4)}],
    ids=["both-backbones-int8", "mixed-stages", "rgb-stages-2-4-bf16"],
)
def test_int8_stage_choices_within_quantisation_bounds(trained, real_inputs, float_stages):
    """Any split of stages between int8 and bf16 runs, and keeps the maps near fp32."""
    from common.accel.int8 import Int8ResNet, quantize_for_inference

    net = quantize_for_inference(trained, real_inputs[:2], float_stages=float_stages)
    int8 = [m for m in net.modules() if isinstance(m, Int8ResNet)]
    assert len(int8) == 2 - sum(set(v) >= {1, 2, 3, 4} for v in float_stages.values())
    for m in int8:
        assert len(m.layers) == 4
    ref, got = _probs(trained, real_inputs), _probs(net, real_inputs)
    _within_bars(ref, got, mean=1.0, peak=16.0, agreement=0.998)


@pytest.mark.parametrize("kind", ["three-class", "classifier-max", "classifier-linear"])
@pytest.mark.parametrize("path", ["fast-winograd", "int8"])
def test_three_class_and_classifier_take_the_same_fast_paths(kind, path, real_inputs):
    """The 3-class model and the classifier run through the same fast paths as the binary
    model: same output fields, maps and image scores close to fp32."""
    from common.accel.paths import inference_path
    from models import get_mvss_cls

    torch.manual_seed(2)
    x = real_inputs[:2, :, :64, :64]
    if kind == "three-class":
        net = build(backbone="resnet18", nclass=3).eval()
    else:
        head = kind.removeprefix("classifier-")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            net = get_mvss_cls(backbone="resnet18", head=head).eval()
    fast = inference_path(net, path, calibration=x)
    with torch.inference_mode():
        ref, got = net(x), fast(x)
    assert type(got) is type(ref) and got.seg.shape == ref.seg.shape
    prob = torch.softmax if kind == "three-class" else (lambda t, dim: torch.sigmoid(t))
    diff = (prob(got.seg.float(), dim=1) - prob(ref.seg, dim=1)).abs() * 255
    bound = 1.0 if path == "fast-winograd" else 4.0
    assert diff.mean() <= bound, diff.mean()
    if kind != "three-class":
        score_ref, score_got = torch.sigmoid(ref.cls.float()), torch.sigmoid(got.cls.float())
        assert got.cls.shape == ref.cls.shape
        assert (score_got - score_ref).abs().max() <= (0.01 if path == "fast-winograd" else 0.05)


@pytest.mark.parametrize("tile", [2, 4])
def test_winograd_weights_are_transformed_where_the_model_is(tile: int) -> None:
    """The commands move a model to its device before the fast path: on a GPU the kernels
    were transformed with a CPU matrix and the build failed (seen on an H200). A meta
    tensor stands in for a device other than the CPU."""
    weight = torch.randn(8, 4, 3, 3, device="meta")
    assert transform_weight(weight, tile).device.type == "meta"
    conv = torch.nn.Conv2d(4, 8, 3, padding=1).to("meta")
    layer = WinogradConv2d(conv, torch.float32, tile)
    assert {b.device.type for b in layer.buffers()} == {"meta"}


def test_agreement_clear_of_the_threshold_leaves_out_the_pixels_next_to_it():
    """bench.path_accuracy's second agreement: pixels of fp32's 8-bit map within 2 levels
    of the threshold (126–129) have no definite side; the others count."""
    from bench.path_accuracy import clear_agreement

    ref = np.array([0, 125, 126, 127, 128, 129, 130, 255], np.uint8)
    got = np.array([0, 128, 128, 128, 127, 127, 130, 100], np.uint8)  # 125 and 255 flip
    agreement, share = clear_agreement(ref, got)
    assert share == 4 / 8 and agreement == 2 / 4
    assert clear_agreement(np.full(3, 127, np.uint8), np.zeros(3, np.uint8)) == (1.0, 0.0)


def test_named_int8_paths_differ_only_in_the_head_tile(real_inputs):
    """``int8`` and ``int8-winograd4`` (what the profiler and the tiled benchmark select)
    are the int8 path with the F(2×2) and the F(4×4) head."""
    from common.accel.int8 import Int8ResNet
    from common.accel.paths import inference_path
    from common.accel.winograd import WinogradConv2d

    torch.manual_seed(0)
    net = build(backbone="resnet18").eval()
    x = real_inputs[:2, :, :64, :64]
    for name, tile in (("int8", 2), ("int8-winograd4", 4)):
        path = inference_path(net, name, calibration=x)
        assert any(isinstance(m, Int8ResNet) for m in path.modules())
        assert {m.tile for m in path.modules() if isinstance(m, WinogradConv2d)} == {tile}
