"""Convolutions packed for their CPU kernel: the same outputs, and no weight copy per call."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from common.accel.packed_conv import (
    PACKED_SHAPES,
    PackedConv2d,
    pack_convolutions,
    packing_available,
)

ROOT = Path(__file__).resolve().parents[1]
needs_onednn = pytest.mark.skipif(not packing_available(), reason="no oneDNN in this build")


needs_bf16 = pytest.mark.skipif(
    not (packing_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()),
    reason="no oneDNN bf16 on this CPU (or build): nothing is packed",
)


def _cl(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


@needs_bf16
@pytest.mark.parametrize(
    "kwargs",
    [
        {"kernel_size": 1},
        {"kernel_size": 3, "padding": 1},
        {"kernel_size": 3, "padding": 2, "dilation": 2},
        {"kernel_size": 3, "stride": 2, "padding": 1, "bias": False},
        {"kernel_size": 7, "stride": 2, "padding": 3},
        {"kernel_size": 3, "padding": 1, "out_channels": 1},  # the edge branch's narrow ones
    ],
)
def test_outputs_are_bit_identical(kwargs):
    torch.manual_seed(0)
    kwargs = {"out_channels": 24, **kwargs}
    conv = nn.Conv2d(16, **kwargs).to(torch.bfloat16, memory_format=torch.channels_last).eval()
    packed = PackedConv2d(conv)
    for batch in (1, 3):
        x = _cl(torch.randn(batch, 32, 20, 18).to(torch.bfloat16))[:, 8:24]  # a channel slice
        for inp in (x, _cl(x), x.contiguous()):  # as sliced, channels_last, plain layout
            with torch.inference_mode():
                got, want = packed(inp), conv(inp)
            assert torch.equal(got, want) and got.stride() == want.stride()
    assert len(packed._packed) == 2  # one packing per input shape: the packed path ran


@needs_bf16
def test_packs_per_shape_within_bounds_and_falls_back_off_its_path():
    conv = nn.Conv2d(4, 8, 3, padding=1).to(torch.bfloat16, memory_format=torch.channels_last)
    packed = PackedConv2d(conv)
    with torch.inference_mode():
        for size in range(8, 8 + PACKED_SHAPES + 2):
            packed(_cl(torch.randn(1, 4, size, size).to(torch.bfloat16)))
    assert len(packed._packed) == PACKED_SHAPES  # the most recent shapes only
    with torch.no_grad():  # weights edited in place: packed again
        packed.weight.mul_(2)
        conv.weight.copy_(packed.weight)
        x = _cl(torch.randn(1, 4, 8, 8).to(torch.bfloat16))
        assert torch.equal(packed(x), conv(x))
    fp32 = PackedConv2d(nn.Conv2d(4, 8, 3, padding=1).eval())
    with torch.inference_mode():
        fp32(torch.randn(1, 4, 8, 8))  # fp32 and plain layouts: PyTorch's own way
    assert fp32._packed == {}
    x = torch.randn(1, 4, 8, 8, requires_grad=True)
    fp32.weight.requires_grad_(True)
    fp32(x).sum().backward()  # autograd: the plain convolution, with gradients
    assert x.grad is not None and fp32.weight.grad is not None
    packed.to(torch.float32)
    assert packed._packed == {}  # a dtype change drops the packed weights


def test_pack_convolutions_replaces_plain_convolutions_only():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding="same"), nn.Conv2d(4, 4, 1), nn.ReLU())
    count = pack_convolutions(net)
    if not packing_available():
        assert count == 0
        return
    assert count == 1  # "same" padding stays a plain convolution
    assert type(net[0]) is nn.Conv2d and isinstance(net[1], PackedConv2d)


PROBE = textwrap.dedent(
    """
    import warnings, torch
    warnings.simplefilter("ignore")
    from models import get_mvss
    from common.accel.fast_path import optimize_for_inference
    from common.accel.int8 import quantize_for_inference
    torch.manual_seed(0)
    net = get_mvss(backbone="resnet18").eval()
    x = torch.randn(2, 3, 64, 64)
    paths = {
        "fast": optimize_for_inference(net, torch.bfloat16, True, winograd=True),
        "int8": quantize_for_inference(net, torch.randn(2, 3, 64, 64)),
    }
    with torch.inference_mode():
        for name, path in paths.items():
            path(x)
            print("=== again", name, flush=True)
            path(x)
            print("=== done", name, flush=True)
    """
)


def _second_call_primitives(probe: str) -> dict[str, list[str]]:
    """The oneDNN primitives each "=== again NAME" ... "=== done NAME" section of ``probe``
    ran, read from ONEDNN_VERBOSE (which names every primitive oneDNN runs)."""
    env = {**os.environ, "ONEDNN_VERBOSE": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    executed: dict[str, list[str]] = {}
    current = None
    for line in proc.stdout.splitlines():
        if line.startswith("=== again"):
            current = line.split()[-1]
            executed[current] = []
        elif line.startswith("=== done"):
            current = None
        elif current and ",exec," in line:
            executed[current].append(line)
    return executed


def _weight_reorders(lines: list[str]) -> list[str]:
    # bf16 and int8 weights are packed; the attention's small fp32 projections (its
    # energies stay fp32) are left to PyTorch, which may run them its own way
    return [line for line in lines if ",reorder," in line and "src:f32" not in line]


@needs_onednn
def test_no_weight_is_laid_out_again_on_a_second_forward():
    """Once a shape has been seen, the fast and int8 paths run convolutions and matrix
    products only, no reorders (a weight packed for another kernel than the one picked on
    this CPU is re-laid out each call)."""
    executed = _second_call_primitives(PROBE)
    assert set(executed) == {"fast", "int8"}
    for name, lines in executed.items():
        assert any(",convolution," in line for line in lines), name  # the log is read
        reorders = _weight_reorders(lines)
        assert not reorders, f"{name}: {reorders[:3]}"


INT8_PROBE = textwrap.dedent(
    """
    import torch
    from torch import nn
    from common.accel.int8 import Int8Conv2d
    torch.manual_seed(0)
    # ResNet-50's last 1x1 convolution at 512² (32x32 at stride 16): on AVX-512 VNNI
    # without AMX, weights packed for this shape were re-laid out at every call
    conv = nn.Conv2d(512, 2048, 1).eval()
    q = torch.randint(0, 255, (1, 512, 32, 32), dtype=torch.uint8)
    q = q.contiguous(memory_format=torch.channels_last)
    accum = torch.randint(0, 255, (1, 2048, 32, 32), dtype=torch.uint8)
    accum = accum.contiguous(memory_format=torch.channels_last)
    plain = Int8Conv2d(conv, (0.01, 0), (0.05, 0), relu=True)
    summed = Int8Conv2d(conv, (0.01, 0), (0.05, 0), relu=True)
    with torch.inference_mode():
        plain(q), summed(q, accum.clone(), (0.05, 0))
        print("=== again int8", flush=True)
        plain(q), summed(q, accum.clone(), (0.05, 0))
        print("=== done int8", flush=True)
    """
)


@needs_onednn
def test_int8_weights_are_packed_for_the_kernel_that_runs():
    """The layout ``qconv_prepack`` chooses for an input shape is not always the one the
    kernel it then runs reads (512→2048 at 32×32 on AMD EPYC: a 27 ms reorder per call);
    the packing kept is the one measured to run without it."""
    lines = _second_call_primitives(INT8_PROBE)["int8"]
    assert sum(",convolution," in line for line in lines) == 2, lines
    assert not _weight_reorders(lines), _weight_reorders(lines)[:2]


@needs_onednn
def test_every_int8_packing_gives_the_same_integers():
    """The layer the packing choice was made for, with and without its residual sum, and
    a convolution a half-size packing cannot exist for (3×3 unpadded at 3×3): every
    packing the choice may keep gives the same output, and the first call works."""
    from common.accel.int8 import Int8Conv2d

    torch.manual_seed(0)
    cases = [(nn.Conv2d(512, 2048, 1), 32, True), (nn.Conv2d(8, 8, 3), 3, False)]
    for conv, size, summed in cases:
        layer = Int8Conv2d(conv.eval(), (0.01, 0), (0.05, 0), relu=True)
        c, o = conv.in_channels, conv.out_channels
        q = _cl(torch.randint(0, 255, (1, c, size, size), dtype=torch.uint8))
        out = size - conv.kernel_size[0] + 1
        accum = _cl(torch.randint(0, 255, (1, o, out, out), dtype=torch.uint8)) if summed else None
        with torch.inference_mode():
            first = layer(q, None if accum is None else accum.clone(), (0.05, 0))
            for shape in [(1, c, size, size), (1, c, 2 * size, 2 * size), (1, c, 16, 16)]:
                packed = layer._prepack(shape)
                again = layer._run(q, packed, None if accum is None else accum.clone(), (0.05, 0))
                assert torch.equal(again, first), (conv, shape)


@needs_onednn
def test_int8_packing_keeps_another_only_when_clearly_faster_twice(monkeypatch):
    """The input shape's own packing is kept unless another runs in under 0.7 of its
    time on two measurements (a one-off fast reading is noise); a size that cannot be
    packed for is passed over; the choice is made once per shape."""
    import time

    from common.accel.int8 import Int8Conv2d

    layer = Int8Conv2d(nn.Conv2d(8, 16, 3, padding=1).eval(), (0.01, 0), (0.05, 0), relu=True)
    q = _cl(torch.zeros(1, 8, 6, 6, dtype=torch.uint8))
    own, bigger, smaller = (1, 8, 6, 6), (1, 8, 12, 12), (1, 8, 3, 3)
    now = [0.0]
    durations: dict[tuple, list[float]] = {}
    made: list[tuple] = []

    def prepack(shape):
        made.append(shape)
        if shape in unpackable:
            raise RuntimeError("could not construct a memory descriptor")
        return shape

    def run(_q, packed, _accum, _accum_q):
        now[0] += durations[packed].pop(0)
        return _q

    monkeypatch.setattr(layer, "_prepack", prepack)
    monkeypatch.setattr(layer, "_run", run)
    monkeypatch.setattr(time, "perf_counter", lambda: now[0])

    def choose(times: dict[tuple, list[float]], cannot: tuple = ()) -> tuple:
        nonlocal unpackable
        unpackable = cannot
        durations.clear()
        durations.update({k: [t for t in v for _ in range(2)] for k, v in times.items()})
        layer._packed.clear()
        return layer.packed_for(q)

    unpackable: tuple = ()
    # ten times faster, twice (the re-laid-out case): kept
    assert choose({own: [1.0, 1.0], bigger: [0.9], smaller: [0.1, 0.1]}) == smaller
    # fast once, then not: noise, the own packing stays
    assert choose({own: [1.0, 1.0], bigger: [0.9], smaller: [0.1, 0.9]}) == own
    # not clearly faster: the own packing
    assert choose({own: [1.0], bigger: [0.8], smaller: [0.75]}) == own
    # the half size cannot be packed for: passed over
    assert choose({own: [1.0, 1.0], bigger: [0.2, 0.2]}, cannot=(smaller,)) == bigger
    made.clear()
    assert layer.packed_for(q) == bigger and made == []  # once per shape


def test_unpacking_gives_plain_convolutions_with_the_same_outputs():
    from common.accel.packed_conv import unpack_convolutions

    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.Conv2d(4, 4, 1)).eval()
    x = torch.randn(1, 3, 9, 9)
    with torch.inference_mode():
        before = net(x)
        pack_convolutions(net)
        unpack_convolutions(net)
        assert torch.equal(net(x), before)
    assert all(type(m) is nn.Conv2d for m in net) and net[0].bias is None


@needs_onednn
def test_used_fast_and_int8_models_can_be_copied():
    """Packed weights (opaque oneDNN tensors) stay behind in copies, which pack again."""
    import copy
    import warnings

    from common.accel.fast_path import optimize_for_inference
    from common.accel.int8 import quantize_for_inference
    from models import get_mvss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = get_mvss(backbone="resnet18").eval()
        x = torch.randn(1, 3, 64, 64)
        paths = [
            optimize_for_inference(net, torch.bfloat16, True, winograd=True),
            quantize_for_inference(net, torch.randn(2, 3, 64, 64)),
        ]
        with torch.inference_mode():
            for path in paths:
                before = path(x).seg
                again = copy.deepcopy(path)(x).seg
                assert torch.equal(before, again)


@needs_bf16
def test_winograd_planes_with_packed_weights_match_the_batched_product(monkeypatch):
    """F(4×4) with few tiles: each Winograd plane runs as a linear layer with weights
    packed once; it computes the batched product's sums (accumulation order aside). More
    tiles than the bound, F(2×2), and FLOP counting go back to the batched product."""
    import common.accel.winograd as winograd

    torch.manual_seed(0)
    conv = nn.Conv2d(64, 32, 3, padding=1)
    layer = winograd.WinogradConv2d(conv, torch.bfloat16, 4)
    x = _cl(torch.randn(1, 64, 16, 16).bfloat16())  # 16 tiles
    with torch.inference_mode():
        packed = layer(x)
        again = layer(x)
        assert len(layer._packed) == 1  # packed once for this tile count
        layer(_cl(torch.randn(1, 64, 20, 20).bfloat16()))  # 25 tiles: packed anew, alone
        assert [key[0] for key in layer._packed] == [25]
        with winograd.batched_products_only():
            counted = layer(x)
        monkeypatch.setattr(winograd, "PACKED_PLANES_MAX_TILES", 0)
        batched = layer(x)
        f2 = winograd.WinogradConv2d(conv, torch.bfloat16, 2)
        f2(x)
        assert not f2._packed  # F(2×2) keeps the batched product
    assert torch.equal(packed, again) and torch.equal(counted, batched)
    scale = batched.float().abs().max()
    assert (packed.float() - batched.float()).abs().max() <= 0.02 * scale
    assert packed.dtype == x.dtype and packed.shape == (1, 32, 16, 16)
