"""3×3 convolutions by Winograd's minimal filtering F(2×2, 3×3), for inference.

Why: 58 % of MVSS-Net's FLOPs are the dual-attention head's 3×3 convolutions
(4096→1024 twice, 1024→1024 twice, on a 32×32 map for a 512² input). On a CPU whose
bf16 matrix-multiply rate is the limit, direct convolution cannot go faster than
FLOPs ÷ rate. F(2×2, 3×3) computes each 2×2 output tile from a 4×4 input tile with
16 multiplications per (input, output) channel pair instead of 36: the same result in
exact arithmetic with 2.25× fewer multiply-adds. The transforms only add, subtract and
halve, so rounding stays close to that of a direct convolution (the tests bound it).

Layout: the input is read as N×H×W×C (a free view of a channels_last tensor), the 16
transformed planes are multiplied as one batched matrix product
``(16, N·tiles, C) @ (16, C, K)``, and the output is returned channels_last. The
transforms run in fp32; only the matrix product uses ``compute_dtype``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Weight transform G of F(2×2, 3×3): U = G g Gᵀ (Lavin & Gray, 2016).
_G = torch.tensor([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, 1.0]])


def winograd_eligible(conv: nn.Module) -> bool:
    """A plain 3×3 convolution with stride 1, dilation 1, padding 1 and no groups."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (3, 3)
        and conv.stride == (1, 1)
        and conv.dilation == (1, 1)
        and conv.padding == (1, 1)
        and conv.groups == 1
        and conv.padding_mode == "zeros"
    )


def transform_weight(weight: torch.Tensor) -> torch.Tensor:
    """K×C×3×3 kernel → the 16 transformed C×K matrices (computed in float64)."""
    g = _G.to(torch.float64)
    u = torch.einsum("ai,kcij,bj->abck", g, weight.detach().double(), g)
    return u.reshape(16, weight.shape[1], weight.shape[0])


def _input_transform(x: torch.Tensor) -> list[torch.Tensor]:
    """Bᵀ d B for every 4×4 tile (stride 2) of the zero-padded N×H×W×C input: 16 planes
    of shape N×tiles_h×tiles_w×C, in (row, column) order."""
    _, h, w, _ = x.shape
    th, tw = (h + 1) // 2, (w + 1) // 2
    xp = F.pad(x, (0, 0, 1, 1 + 2 * tw - w, 1, 1 + 2 * th - h))
    a = [xp[:, i : i + 2 * th : 2] for i in range(4)]
    rows = (a[0] - a[2], a[1] + a[2], a[2] - a[1], a[1] - a[3])
    planes = []
    for r in rows:
        b = [r[:, :, j : j + 2 * tw : 2] for j in range(4)]
        planes += [b[0] - b[2], b[1] + b[2], b[2] - b[1], b[1] - b[3]]
    return planes


def _output_transform(m: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Aᵀ M A: (4, 4, N, tiles_h, tiles_w, K) → N×H×W×K."""
    r0 = m[0] + m[1] + m[2]
    r1 = m[1] - m[2] - m[3]
    y = torch.stack([torch.stack([r[0] + r[1] + r[2], r[1] - r[2] - r[3]]) for r in (r0, r1)])
    _, _, n, th, tw, k = y.shape  # y[a, b, n, i, j] is output pixel (2i + a, 2j + b)
    y = y.permute(2, 3, 0, 4, 1, 5).reshape(n, 2 * th, 2 * tw, k)
    return y[:, :h, :w]


_TILES_PER_CHUNK = 256


class WinogradConv2d(nn.Module):
    """Inference-only drop-in for an eligible ``nn.Conv2d`` (see ``winograd_eligible``).

    ``compute_dtype`` is the dtype of the matrix product (bf16 on CPUs with AVX-512 BF16
    or AMX, and on recent GPUs); inputs may be any float dtype, and the output has the
    input's dtype, in channels_last memory format.
    """

    def __init__(self, conv: nn.Conv2d, compute_dtype: torch.dtype = torch.float32) -> None:
        super().__init__()
        if not winograd_eligible(conv):
            raise ValueError(f"not a 3×3 stride-1 dilation-1 padding-1 convolution: {conv}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.compute_dtype = compute_dtype
        weight = transform_weight(conv.weight).to(compute_dtype)
        self.register_buffer("weight_t", weight.contiguous())
        bias = conv.bias.detach().float() if conv.bias is not None else None
        self.register_buffer("bias", bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {c}")
        # A few images at a time: the 16 transformed planes are 4× the input, and keeping
        # them in cache matters more than the size of each matrix product.
        tiles = ((h + 1) // 2) * ((w + 1) // 2)
        step = max(1, _TILES_PER_CHUNK // tiles)
        nhwc = x.permute(0, 2, 3, 1)
        parts = [self._forward_nhwc(nhwc[i : i + step]) for i in range(0, n, step)]
        y = parts[0] if len(parts) == 1 else torch.cat(parts)
        return y.permute(0, 3, 1, 2)

    def _forward_nhwc(self, x: torch.Tensor) -> torch.Tensor:
        n, h, w, c = x.shape
        planes = _input_transform(x.float())
        th, tw = planes[0].shape[1:3]
        v = torch.empty((16, n * th * tw, c), dtype=self.compute_dtype, device=x.device)
        for i, plane in enumerate(planes):
            v[i].copy_(plane.reshape(-1, c))
        del planes
        m = torch.bmm(v, self.weight_t)
        del v
        m = m.float().view(4, 4, n, th, tw, self.out_channels)
        y = _output_transform(m, h, w)
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype)

    def extra_repr(self) -> str:
        return f"{self.in_channels}, {self.out_channels}, F(2×2, 3×3), {self.compute_dtype}"


def winograd_convs(model: nn.Module, compute_dtype: torch.dtype, min_channels: int) -> int:
    """Replace, in place, every eligible convolution whose input and output channels are
    both ≥ ``min_channels`` (small ones gain less than the transforms cost). Returns how
    many were replaced."""
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if winograd_eligible(child) and min(child.in_channels, child.out_channels) >= min_channels
    ]
    for parent, name, child in targets:
        setattr(parent, name, WinogradConv2d(child, compute_dtype))
    return len(targets)
