"""Opt-in int8 backbone stages for CPU inference (x86 VNNI / AMX through oneDNN).

Why: the two ResNet backbones are a third of the fast path's time and half its FLOPs;
int8 multiplies at twice the bf16 rate on x86 CPUs with VNNI or AMX. By default only the
RGB backbone's last two residual stages run in int8 (``FLOAT_STAGES``: the noise view
and the early RGB stages are too sensitive); ``float_stages`` chooses per backbone and
stage. The flow is
PyTorch's static post-training quantization: weights per output channel (symmetric int8,
``PerChannelMinMaxObserver``), activations per tensor (uint8, ``HistogramObserver``)
calibrated on a few images run through the fp32 model; the convolutions run as
``torch.ops.onednn.qconv2d_pointwise`` (the kernels PyTorch's x86 quantization backend
lowers to) on plain uint8 tensors, since PyTorch's quantized tensor types are deprecated.

Inside each int8 residual block every tensor stays uint8: convolutions write uint8 with
ReLU fused, and the residual sum is fused into the last convolution of the block. Only the
stage outputs that leave the backbone (c1..c4 for the RGB view, c4 for the noise view)
are turned back into bf16. The sensitive layers stay bf16: both stems (the RGB
backbone's first 7×7 convolution, the Bayar filter and the noise backbone's first
convolution), the edge branch, the head, the attention and the outputs. Its accuracy cost
is measured (``python -m bench.inference --int8``) and printed when it is used.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import nn
from torch.ao.quantization import HistogramObserver, PerChannelMinMaxObserver

from common.accel.fast_path import WINOGRAD_TILE, optimize_for_inference
from common.accel.packed_conv import PacksWeights
from models.backbone import Bottleneck, ResNet

# Which tensors get activation scales: the stem output, and in every block the outputs
# of its inner convolutions, of its downsample branch and of the block itself.
Qparams = dict[str, tuple[float, int]]

# Another packing than the one made for the input's shape is kept only when it runs in
# under this fraction of the time (a re-laid-out weight costs several times the call).
FASTER_PACKING = 0.7


def _observer() -> HistogramObserver:
    return HistogramObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine)


def _qparams(observer: HistogramObserver) -> tuple[float, int]:
    scale, zero_point = observer.calculate_qparams()
    return float(scale), int(zero_point)


def quantize(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """Real tensor → uint8 codes (round to nearest, saturating), same memory format."""
    q = torch.round(x.float() * (1.0 / scale)).add_(zero_point).clamp_(0, 255)
    return q.to(torch.uint8)


def dequantize(q: torch.Tensor, scale: float, zero_point: int, dtype: torch.dtype) -> torch.Tensor:
    return (q.to(dtype) - zero_point) * scale


class Int8Conv2d(PacksWeights):
    """A folded convolution on uint8 input: int8 weights per output channel, uint8 out
    (or ``out_dtype``), ReLU and a residual sum optionally fused."""

    def __init__(
        self,
        conv: nn.Conv2d,
        x_q: tuple[float, int],
        out_q: tuple[float, int] | None,
        relu: bool,
    ) -> None:
        super().__init__()
        weight = conv.weight.detach().float()
        observer = PerChannelMinMaxObserver(
            ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric
        )
        observer(weight)
        w_scale, _ = observer.calculate_qparams()
        self.w_scale = w_scale.float()
        self.w_zero = torch.zeros(len(w_scale), dtype=torch.int64)
        qweight = torch.round(weight / self.w_scale.view(-1, 1, 1, 1)).clamp(-128, 127)
        self.x_scale, self.x_zero = x_q
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups
        self.qweight = qweight.to(torch.int8)
        bias = conv.bias.detach().float() if conv.bias is not None else None
        self.bias = bias
        self.out_q = out_q
        self.relu = relu

    def _prepack(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.ops.onednn.qconv_prepack(
            self.qweight,
            self.w_scale,
            self.x_scale,
            self.x_zero,
            self.stride,
            self.padding,
            self.dilation,
            self.groups,
            list(shape),
        )

    def packed_for(
        self,
        q: torch.Tensor,
        accum: torch.Tensor | None = None,
        accum_q: tuple[float, int] | None = None,
    ) -> torch.Tensor:
        """The weights packed for ``q``'s shape, once per shape (the few most recent).
        ``qconv_prepack`` given the input's shape does not always lay the weights out as
        the kernel that then runs reads them (ResNet-50's 512→2048 1×1 at 512² on AVX-512
        VNNI without AMX: re-laid out at every call, 27 ms instead of 2.5; see
        docs/performance.md), so the first call at a shape measures which packing runs
        fastest (:meth:`_fastest_packing`)."""
        return self._packed_once(tuple(q.shape), lambda: self._fastest_packing(q, accum, accum_q))

    def _seconds(
        self,
        q: torch.Tensor,
        packed: torch.Tensor,
        accum: torch.Tensor | None,
        accum_q: tuple[float, int] | None,
    ) -> float:
        """One call's time, after a call that makes oneDNN's primitive; the residual sum is
        written into its accumulator, so each call gets a copy."""
        seconds = float("inf")
        for _ in range(2):
            scratch = None if accum is None else accum.clone()
            start = time.perf_counter()
            self._run(q, packed, scratch, accum_q)
            seconds = time.perf_counter() - start
        return seconds

    def _fastest_packing(
        self, q: torch.Tensor, accum: torch.Tensor | None, accum_q: tuple[float, int] | None
    ) -> torch.Tensor:
        """The packing for ``q``'s own shape, unless one made for twice or half its size
        runs in under ``FASTER_PACKING`` of its time, twice in a row (a re-layout costs
        many times the call, far beyond timing noise; every layout gives the same
        integers). A size oneDNN cannot pack for is passed over."""
        n, c, h, w = q.shape
        own = best = self._prepack((n, c, h, w))
        best_seconds = self._seconds(q, own, accum, accum_q)
        others = {(n, c, 2 * h, 2 * w), (n, c, max(1, h // 2), max(1, w // 2))} - {(n, c, h, w)}
        for shape in sorted(others):
            try:
                packed = self._prepack(shape)
                seconds = self._seconds(q, packed, accum, accum_q)
            except RuntimeError:  # e.g. no valid convolution at that size
                continue
            if seconds < FASTER_PACKING * best_seconds:
                best, best_seconds = packed, seconds
        if best is not own:  # confirmed by a second measurement of both
            again = self._seconds(q, best, accum, accum_q)
            if again >= FASTER_PACKING * self._seconds(q, own, accum, accum_q):
                return own
        return best

    def _out(self) -> tuple[float, int, torch.dtype | None]:
        if self.out_q is None:  # real-valued output in bf16
            return 1.0, 0, torch.bfloat16
        return self.out_q[0], self.out_q[1], None

    def forward(
        self,
        q: torch.Tensor,
        accum: torch.Tensor | None = None,
        accum_q: tuple[float, int] | None = None,
    ) -> torch.Tensor:
        return self._run(q, self.packed_for(q, accum, accum_q), accum, accum_q)

    def _run(
        self,
        q: torch.Tensor,
        packed: torch.Tensor,
        accum: torch.Tensor | None,
        accum_q: tuple[float, int] | None,
    ) -> torch.Tensor:
        scale, zero, dtype = self._out()
        common = (self.stride, self.padding, self.dilation, self.groups, scale, zero, dtype)
        if accum is None:
            return torch.ops.onednn.qconv2d_pointwise(
                q,
                self.x_scale,
                self.x_zero,
                packed,
                self.w_scale,
                self.w_zero,
                self.bias,
                *common,
                "relu" if self.relu else "none",
                [],
                "",
            )
        a_scale, a_zero = accum_q if accum_q is not None else (1.0, 0)
        return torch.ops.onednn.qconv2d_pointwise.binary(
            q,
            self.x_scale,
            self.x_zero,
            packed,
            self.w_scale,
            self.w_zero,
            accum,
            self.bias,
            *common,
            a_scale,
            a_zero,
            "sum",
            1.0,
            "relu" if self.relu else None,
            [],
            "",
        )


class Int8Block(nn.Module):
    """A Bottleneck or BasicBlock on uint8 codes in and out."""

    def __init__(self, block: nn.Module, name: str, qp: Qparams, x_q: tuple[float, int]) -> None:
        super().__init__()
        out_q = qp[f"{name}.out"]
        if isinstance(block, Bottleneck):
            a_q, b_q = qp[f"{name}.conv1"], qp[f"{name}.conv2"]
            self.inner = nn.ModuleList(
                [Int8Conv2d(block.conv1, x_q, a_q, True), Int8Conv2d(block.conv2, a_q, b_q, True)]
            )
            last_in = b_q
        else:
            a_q = qp[f"{name}.conv1"]
            self.inner = nn.ModuleList([Int8Conv2d(block.conv1, x_q, a_q, True)])
            last_in = a_q
        self.last = Int8Conv2d(
            block.conv3 if isinstance(block, Bottleneck) else block.conv2, last_in, out_q, True
        )
        self.downsample = None
        self.identity_q = x_q
        if block.downsample is not None:
            self.identity_q = qp[f"{name}.downsample"]
            self.downsample = Int8Conv2d(block.downsample[0], x_q, self.identity_q, False)
        self.out_q = out_q

    def forward(self, q: torch.Tensor) -> torch.Tensor:
        identity = q if self.downsample is None else self.downsample(q)
        out = q
        for conv in self.inner:
            out = conv(out)
        return self.last(out, identity, self.identity_q)


class Int8ResNet(nn.Module):
    """A folded ResNet whose residual stages run in int8; stem and outputs in bf16.
    ``keep`` says which stage outputs (1..4) leave it (others are returned as None);
    stages in ``float_stages`` run ``fast``'s bf16 layers instead."""

    def __init__(
        self,
        resnet: ResNet,
        fast: ResNet,
        prefix: str,
        qp: Qparams,
        keep: Iterable[int],
        float_stages: Iterable[int] = (),
    ) -> None:
        super().__init__()
        self.conv1, self.relu, self.maxpool = fast.conv1, fast.relu, fast.maxpool
        self.float_stages = set(float_stages)
        self.in_q: list[tuple[float, int]] = []  # the scale each stage's input is coded in
        x_q = qp[f"{prefix}.stem"]
        self.layers = nn.ModuleList()
        for i in range(1, 5):
            self.in_q.append(x_q)
            if i in self.float_stages:
                self.layers.append(getattr(fast, f"layer{i}"))
            else:
                blocks = [
                    Int8Block(block, f"{prefix}.layer{i}.{j}", qp, blocks_q)
                    for j, block, blocks_q in self._chain(resnet, i, prefix, qp, x_q)
                ]
                self.layers.append(nn.Sequential(*blocks))
            last = len(getattr(resnet, f"layer{i}")) - 1
            x_q = qp[f"{prefix}.layer{i}.{last}.out"]
        self.out_q = [*self.in_q[1:], x_q]
        self.keep = set(keep)

    @staticmethod
    def _chain(resnet: ResNet, i: int, prefix: str, qp: Qparams, x_q: tuple[float, int]):
        """(index, block, its input's qparams) along stage ``i``."""
        for j, block in enumerate(getattr(resnet, f"layer{i}")):
            yield j, block, x_q
            x_q = qp[f"{prefix}.layer{i}.{j}.out"]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor | None, ...]:
        real: torch.Tensor | None = self.maxpool(self.relu(self.conv1(x)))
        dtype = real.dtype
        q: torch.Tensor | None = None
        outputs: list[torch.Tensor | None] = []
        for i, layer in enumerate(self.layers, start=1):
            if i in self.float_stages:
                if real is None:
                    real = dequantize(q, *self.in_q[i - 1], dtype)
                real, q = layer(real), None
            else:
                if q is None:
                    q = quantize(real, *self.in_q[i - 1]).contiguous(
                        memory_format=torch.channels_last
                    )
                q, real = layer(q), None
            if i in self.keep:
                if real is None:
                    real = dequantize(q, *self.out_q[i - 1], dtype)
                outputs.append(real)
            else:
                outputs.append(None)
        return tuple(outputs)


def _named_observation_points(resnet: ResNet, prefix: str) -> list[tuple[nn.Module, str, bool]]:
    """(module, qparam name, apply ReLU to what it outputs) for calibration hooks."""
    points = [(resnet.maxpool, f"{prefix}.stem", False)]
    for i in range(1, 5):
        for j, block in enumerate(getattr(resnet, f"layer{i}")):
            name = f"{prefix}.layer{i}.{j}"
            points.append((block.conv1, f"{name}.conv1", True))
            if isinstance(block, Bottleneck):
                points.append((block.conv2, f"{name}.conv2", True))
            if block.downsample is not None:
                points.append((block.downsample, f"{name}.downsample", False))
            points.append((block, f"{name}.out", False))
    return points


BACKBONE_PREFIXES = {"model": "rgb", "noise_extractor.model": "noise"}
# Residual stages (1..4) that stay bf16, per backbone. The noise view stays bf16 whole:
# its inputs are the Bayar filter's faint residuals, and int8 codes of them, stage after
# stage, moved the demo ResNet-18's maps by 0.84/255 (99.71 % binary agreement) against
# 0.30/255 (99.92 %) with the noise view in bf16. The RGB view's first two stages stay
# bf16 too: on the ResNet-50 model they took its maps from 1.74/255 to 0.75/255 while
# holding a quarter of its FLOPs (layer3 and the dilated layer4 hold the rest; docs/performance.md).
FLOAT_STAGES: dict[str, tuple[int, ...]] = {"rgb": (1, 2), "noise": (1, 2, 3, 4)}
ALL_STAGES = {1, 2, 3, 4}


def calibrate(fast_fp32: nn.Module, images: torch.Tensor) -> Qparams:
    """Activation scales of both backbones from ``images`` (normalised, N×3×H×W) run one
    at a time through the folded fp32 model."""
    net = fast_fp32.net if hasattr(fast_fp32, "net") else fast_fp32
    observers: dict[str, HistogramObserver] = {}
    handles = []
    for path, prefix in BACKBONE_PREFIXES.items():
        resnet = net.get_submodule(path)
        for module, name, relu in _named_observation_points(resnet, prefix):
            observers[name] = _observer()

            def hook(_m, _i, out, name=name, relu=relu) -> None:
                observers[name](F.relu(out) if relu else out)

            handles.append(module.register_forward_hook(hook))
    try:
        with torch.inference_mode():
            for image in images:
                fast_fp32(image[None])
    finally:
        for h in handles:
            h.remove()
    return {name: _qparams(obs) for name, obs in observers.items()}


def quantize_for_inference(
    model: nn.Module,
    calibration: torch.Tensor | None = None,
    qparams: Qparams | None = None,
    winograd: bool = True,
    float_stages: dict[str, Iterable[int]] | None = None,
    winograd_tile: int = WINOGRAD_TILE,
) -> nn.Module:
    """The fast bf16 path (its head by Winograd F(``winograd_tile``×…) with ``winograd``)
    with backbone residual stages in int8 (those not in ``float_stages``, default
    ``FLOAT_STAGES``). Scales come from ``qparams`` (a saved calibration) or are calibrated
    on ``calibration`` images (both backbones, always)."""
    if not torch.backends.mkldnn.is_available():
        raise RuntimeError("the int8 path needs PyTorch's oneDNN (x86 CPU) backend")
    if qparams is None:
        if calibration is None or len(calibration) == 0:
            raise ValueError("the int8 path needs calibration images or saved scales")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # observers on inference tensors
            qparams = calibrate(optimize_for_inference(model), calibration)
    float_stages = FLOAT_STAGES if float_stages is None else float_stages
    fast = optimize_for_inference(
        model, torch.bfloat16, True, winograd=winograd, winograd_tile=winograd_tile
    )
    folded_fp32 = optimize_for_inference(model).net  # int8 weights from the fp32 ones
    net = fast.net
    for path, prefix in BACKBONE_PREFIXES.items():
        if not hasattr(net, path.split(".")[0]):
            continue
        parent_path, _, attr = path.rpartition(".")
        parent = net.get_submodule(parent_path) if parent_path else net
        fast_resnet = net.get_submodule(path)  # bf16, channels_last: stem and float stages
        keep = (1, 2, 3, 4) if prefix == "rgb" else (4,)
        resnet = folded_fp32.get_submodule(path)
        floats = float_stages.get(prefix, ())
        if set(floats) >= ALL_STAGES:
            continue  # this backbone stays the fast path's bf16 one
        setattr(parent, attr, Int8ResNet(resnet, fast_resnet, prefix, qparams, keep, floats))
    fast.qparams = qparams
    return fast
