"""Faster inference with the same maps: folding, merging, bf16, Winograd, fused gates.

``optimize_for_inference`` returns a new eval-only model (the original is untouched):
- every BatchNorm that follows a convolution is folded into it (exact up to rounding),
  and the Bayar kernel becomes a fixed weight;
- the two 3×3 4096→1024 convolutions of the dual-attention head that read the same
  input (``conv_p1``, ``conv_c1``: 61 % of the FLOPs) run as one convolution, one
  larger matrix product instead of two;
- the edge branch's Sobel gates and first ERB projections run as one 3×3 convolution
  per stage (``common/accel/fused_edge.py``; ``fuse_edge=False`` keeps them apart);
- optional: weights stored in bf16 (``dtype=torch.bfloat16``), so autocast does not
  re-cast 147 M parameters at every forward; the attention blocks then keep their
  energies and softmax in fp32 and run their weighted sums in bf16
  (``common/accel/mixed_attention.py``); outputs come back in fp32;
- optional: channels_last memory format and ``torch.compile``;
- on CPU in bf16 + channels_last, every remaining convolution keeps its weights laid out
  for the oneDNN kernel that runs it (``common/accel/packed_conv.py``: same outputs, no
  per-call weight copy);
- optional (``winograd=True``): the head's wide 3×3 convolutions by Winograd F(m×m, 3×3)
  (``common/accel/winograd.py``; m = ``winograd_tile``, 2 by default: 2.25× fewer multiply-adds
  there; 4: 4× fewer, larger rounding).

The int8 path builds on the fastest one (``common/accel/int8.py``); ``common/accel/paths.py``
names the combinations the benchmarks and the profiler compare. The accuracy cost is
measured by ``bench/inference.py`` and ``bench/path_accuracy.py`` and bounded
by tests.
"""

from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from torch import nn

from common.accel.fused_edge import fuse_edge_gates
from common.accel.mixed_attention import mixed_attention
from common.accel.packed_conv import pack_convolutions
from common.accel.winograd import winograd_convs
from models.attention import DAHead
from models.backbone import BasicBlock, Bottleneck, ResNet
from models.edge import ERB
from models.outputs import ModelOutput, cast_output

# Winograd is applied to the dual-attention head (ResNet-50: 4096→2048 merged and
# 1024→1024 twice, 58 % of the FLOPs), and only to convolutions at least this wide on both
# sides: narrow ones gain less than their transforms cost.
WINOGRAD_MIN_CHANNELS = 256
# F(m×m, 3×3): 2 (2.25× fewer multiply-adds) or 4 (4×, larger rounding; see winograd.py).
WINOGRAD_TILE = 2


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
    weight = conv.weight.detach() * scale.view(-1, 1, 1, 1)
    bias = conv.bias.detach() if conv.bias is not None else torch.zeros_like(bn.running_mean)
    bias = (bias - bn.running_mean) * scale + bn.bias.detach()
    conv.weight = nn.Parameter(weight, requires_grad=False)
    conv.bias = nn.Parameter(bias, requires_grad=False)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold every conv→BN pair in place (the BN becomes Identity); returns how many."""
    pairs: list[tuple[nn.Module, nn.Conv2d, str]] = []
    for module in model.modules():
        if isinstance(module, nn.Sequential):
            for (_, a), (bn_name, b) in itertools.pairwise(module.named_children()):
                if isinstance(a, nn.Conv2d) and isinstance(b, nn.BatchNorm2d):
                    pairs.append((module, a, bn_name))
        named = {
            ResNet: (("conv1", "bn1"),),
            Bottleneck: (("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")),
            BasicBlock: (("conv1", "bn1"), ("conv2", "bn2")),
            ERB: (("conv2", "bn"),),
        }
        for kind, names in named.items():
            if type(module) is kind:
                for conv_name, bn_name in names:
                    pairs.append((module, getattr(module, conv_name), bn_name))
    for parent, conv, bn_name in pairs:
        bn = getattr(parent, bn_name)
        _fold(conv, bn)
        setattr(parent, bn_name, nn.Identity())
    return len(pairs)


class _FastDAHead(nn.Module):
    """DAHead with conv_p1 and conv_c1 merged into one convolution (BN already folded)."""

    def __init__(self, head: DAHead) -> None:
        super().__init__()
        p1, c1 = head.conv_p1[0], head.conv_c1[0]
        self.inter = p1.out_channels
        self.entry = nn.Conv2d(p1.in_channels, 2 * self.inter, 3, padding=1)
        with torch.no_grad():
            self.entry.weight.copy_(torch.cat([p1.weight, c1.weight]))
            self.entry.bias.copy_(torch.cat([p1.bias, c1.bias]))
        self.pam, self.cam = head.pam, head.cam
        self.conv_p2, self.conv_c2, self.out = head.conv_p2, head.conv_c2, head.out

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        both = F.relu(self.entry(x))
        p, c = both[:, : self.inter], both[:, self.inter :]
        p = self.conv_p2(self.pam(p))
        c = self.conv_c2(self.cam(c))
        fused = p + c
        return {"seg": self.out(fused), "fused": fused}


class _CastIO(nn.Module):
    """Casts the input to the weights' dtype and the outputs back to fp32."""

    def __init__(self, net: nn.Module, dtype: torch.dtype, channels_last: bool) -> None:
        super().__init__()
        self.net = net
        self.dtype = dtype
        self.channels_last = channels_last

    def forward(self, x: torch.Tensor) -> ModelOutput:
        x = x.to(self.dtype)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return cast_output(self.net(x), torch.float32)


def optimize_for_inference(
    model: nn.Module,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
    merge_head: bool = True,
    compile_model: bool = False,
    winograd: bool = False,
    winograd_min_channels: int = WINOGRAD_MIN_CHANNELS,
    winograd_tile: int = WINOGRAD_TILE,
    fuse_edge: bool = True,
    pack: bool = True,
) -> nn.Module:
    """An inference-only copy of an MVSS-Net (or classifier) that computes the same maps
    faster. ``dtype=torch.bfloat16`` stores weights in bf16 (CPUs with AVX-512 BF16/AMX,
    recent GPUs). ``pack`` lays bf16 channels_last convolution weights out once for the
    CPU kernels (left off under ``torch.compile``, which packs its own)."""
    net = copy.deepcopy(model).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    if hasattr(net, "constrain_conv"):  # the Bayar kernel becomes a fixed weight
        bayar = net.constrain_conv
        kernel = bayar.effective_kernel().detach()
        conv = nn.Conv2d(
            bayar.in_channels,
            bayar.out_channels,
            bayar.kernel_size,
            padding=bayar.padding,
            bias=False,
        )
        conv.weight = nn.Parameter(kernel, requires_grad=False)
        net.constrain_conv = conv
    fold_batchnorm(net)
    if fuse_edge:
        fuse_edge_gates(net)
    head = getattr(net, "head", None)
    if not isinstance(head, DAHead):
        raise TypeError(f"not an MVSS-Net (no dual-attention head): {type(model).__name__}")
    if merge_head and not head.aux:
        net.head = head = _FastDAHead(head)
    if winograd:  # kernels transformed from the fp32 weights, then stored in ``dtype``
        winograd_convs(head, dtype, winograd_min_channels, winograd_tile)
    if dtype != torch.float32:  # energies and softmax in fp32, weighted sums in ``dtype``
        head.pam, head.cam = mixed_attention(head.pam, dtype), mixed_attention(head.cam, dtype)
    net = net.to(dtype)  # Winograd and attention layers keep their split of dtypes
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if pack and not compile_model and dtype == torch.bfloat16 and channels_last:
        pack_convolutions(net)
    wrapped: nn.Module = _CastIO(net, dtype, channels_last)
    if compile_model:
        wrapped = torch.compile(wrapped)
    return wrapped
