"""3×3 convolutions by Winograd's minimal filtering F(m×m, 3×3), m = 2 or 4, for inference.

Why: most of MVSS-Net's FLOPs are the dual-attention head's 3×3 convolutions (4096→2048
merged and 1024→1024 twice, on a 32×32 map for a 512² input). F(m×m, 3×3) computes each
m×m output tile from an (m+2)×(m+2) input tile with (m+2)² multiplications per (input,
output) channel pair instead of 9·m²: F(2×2) 16 instead of 36 (2.25× fewer multiply-adds),
F(4×4) 36 instead of 144 (4×). The transforms (Lavin & Gray, 2016) only add, subtract and
scale by small constants; F(4×4)'s larger constants amplify rounding more (the tests and
the benchmarks bound both).

Layout: the input is read as N×H×W×C (a free view of a channels_last tensor); the
(m+2)² strided tile planes are gathered into one (α², tiles·C) matrix, transformed by one
small matrix product (kron(Bᵀ, Bᵀ), α² × α²), multiplied by the transformed kernels as one
batched product ``(α², tiles, C) @ (α², C, K)``, and transformed back by one more small
product (kron(Aᵀ, Aᵀ), m² × α²). Each transform is a single pass over memory instead of
dozens of elementwise passes. The transforms use ``compute_dtype`` with fp32 accumulation
inside the product, which rounds exactly where the batched product's operands and output
are rounded anyway.

F(4×4) with few tiles (64 per plane on the 32×32 head map of a 512² input): each plane's
product is mostly reading its weights, and ``torch.bmm`` re-lays the bf16 weights out for
oneDNN's kernel at every call. There, on the CPU in bf16, each plane runs as a linear layer
whose weights are laid out once for that kernel (``mkldnn._reorder_linear_weight`` +
``_linear_pointwise``): 1.31× faster on the head's 36 × 64×4096·4096×2048 products, with
AMX and without (measured side by side, docs/performance.md). The price is a second copy
of the layer's transformed weights, packed (about 0.6 GB for the ResNet-50 head's
4096→2048 layer), kept for one tile count at a time. F(2×2), and more tiles, measured as
fast or faster with the batched product, so they keep it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from common.accel.packed_conv import (
    LINEAR_OPS,
    PacksWeights,
    packable_dtypes,
    packing_available,
    weights_version,
)

# Transform matrices (Lavin & Gray, 2016): input Bᵀ, kernel G, output Aᵀ.
_BT = {
    2: ((1, 0, -1, 0), (0, 1, 1, 0), (0, -1, 1, 0), (0, 1, 0, -1)),
    4: (
        (4, 0, -5, 0, 1, 0),
        (0, -4, -4, 1, 1, 0),
        (0, 4, -4, -1, 1, 0),
        (0, -2, -1, 2, 1, 0),
        (0, 2, -1, -2, 1, 0),
        (0, 4, 0, -5, 0, 1),
    ),
}
_G = {
    2: ((1, 0, 0), (0.5, 0.5, 0.5), (0.5, -0.5, 0.5), (0, 0, 1)),
    4: (
        (1 / 4, 0, 0),
        (-1 / 6, -1 / 6, -1 / 6),
        (-1 / 6, 1 / 6, -1 / 6),
        (1 / 24, 1 / 12, 1 / 6),
        (1 / 24, -1 / 12, 1 / 6),
        (0, 0, 1),
    ),
}
_AT = {
    2: ((1, 1, 1, 0), (0, 1, -1, -1)),
    4: ((1, 1, 1, 1, 1, 0), (0, 1, -1, 2, -2, 0), (0, 1, 1, 4, 4, 0), (0, 1, -1, 8, -8, 1)),
}
TILE_SIZES = tuple(_BT)
# Per-plane products with packed weights: for these tile sizes m, up to this many tiles
# per plane (see the module docstring).
PACKED_PLANES_TILES = (4,)
PACKED_PLANES_MAX_TILES = 64
_batched_only = False


@contextlib.contextmanager
def batched_products_only() -> Iterator[None]:
    """Every Winograd layer multiplies with ``torch.bmm`` inside this block (FLOP counters
    know its formula, not oneDNN's linear operator's)."""
    global _batched_only
    before, _batched_only = _batched_only, True
    try:
        yield
    finally:
        _batched_only = before


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


def _matrix(rows: tuple, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    return torch.tensor(rows, dtype=dtype)


def transform_weight(
    weight: torch.Tensor, tile: int = 2, dtype: torch.dtype = torch.float32, chunk: int = 128
) -> torch.Tensor:
    """K×C×3×3 kernel → the α² transformed C×K matrices in ``dtype``, computed in float64
    ``chunk`` output channels at a time (the head's 4096→2048 kernel in float64 at once
    would be a 1 GB transient for F(2×2))."""
    g = _matrix(_G[tile]).to(weight.device)  # a model already on the GPU: transform there
    alpha = tile + 2
    k, c = weight.shape[:2]
    out = torch.empty(alpha * alpha, c, k, dtype=dtype, device=weight.device)
    w = weight.detach()
    for start in range(0, k, chunk):
        part = torch.einsum("ai,kcij,bj->abck", g, w[start : start + chunk].double(), g)
        out[:, :, start : start + chunk] = part.reshape(alpha * alpha, c, -1).to(dtype)
    return out


class WinogradConv2d(PacksWeights):
    """Inference-only drop-in for an eligible ``nn.Conv2d`` (see ``winograd_eligible``).

    ``compute_dtype`` is the dtype of the matrix products (bf16 on CPUs with AVX-512 BF16
    or AMX, and on recent GPUs); ``tile`` is m of F(m×m, 3×3). Inputs may be any float
    dtype; the output has the input's dtype, in channels_last memory format.
    """

    max_packed = 1  # packed F(4×4) planes are as large as weight_t: one tile count at a time

    def __init__(
        self, conv: nn.Conv2d, compute_dtype: torch.dtype = torch.float32, tile: int = 2
    ) -> None:
        super().__init__()
        if not winograd_eligible(conv):
            raise ValueError(f"not a 3×3 stride-1 dilation-1 padding-1 convolution: {conv}")
        if tile not in TILE_SIZES:
            raise ValueError(f"tile must be one of {TILE_SIZES}, got {tile}")
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.compute_dtype = compute_dtype
        self.tile = tile
        bt, at = _matrix(_BT[tile]), _matrix(_AT[tile])
        self.register_buffer("weight_t", transform_weight(conv.weight, tile, compute_dtype))
        device = conv.weight.device
        self.register_buffer("input_t", torch.kron(bt, bt).to(device, compute_dtype))
        self.register_buffer("output_t", torch.kron(at, at).to(device, compute_dtype))
        # The bias keeps its fp32 value: it is added once, after the products.
        bias = conv.bias.detach().float() if conv.bias is not None else None
        self.register_buffer("bias", bias)

    def _apply(self, fn, recurse=True):
        kept = {k: b for k, b in self._buffers.items() if b is not None}
        super()._apply(fn, recurse)
        for k, b in kept.items():  # follow the device, never the dtype
            self._buffers[k] = b.to(self._buffers[k].device)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if c != self.in_channels:
            raise ValueError(f"expected {self.in_channels} input channels, got {c}")
        m, alpha = self.tile, self.tile + 2
        th, tw = -(-h // m), -(-w // m)
        nhwc = x.permute(0, 2, 3, 1).to(self.compute_dtype)
        xp = F.pad(nhwc, (0, 0, 1, 1 + m * tw - w, 1, 1 + m * th - h))
        tiles = n * th * tw
        d = torch.empty((alpha, alpha, n, th, tw, c), dtype=self.compute_dtype, device=x.device)
        for i in range(alpha):
            rows = xp[:, i : i + m * th : m]
            for j in range(alpha):
                d[i, j].copy_(rows[:, :, j : j + m * tw : m])
        v = (self.input_t @ d.view(alpha * alpha, -1)).view(alpha * alpha, tiles, c)
        del d
        prod = self._products(v)  # (α², tiles, K)
        del v
        y = self.output_t @ prod.view(alpha * alpha, -1)  # (m², tiles·K)
        del prod
        k = self.out_channels
        y = y.view(m, m, n, th, tw, k).permute(2, 3, 0, 4, 1, 5).reshape(n, m * th, m * tw, k)
        y = y[:, :h, :w]
        if self.bias is not None:
            y = y + self.bias
        return y.to(x.dtype).permute(0, 3, 1, 2)

    def _products(self, v: torch.Tensor) -> torch.Tensor:
        """(α², tiles, C) @ the transformed kernels → (α², tiles, K)."""
        tiles = v.shape[1]
        if not (
            self.tile in PACKED_PLANES_TILES
            and tiles <= PACKED_PLANES_MAX_TILES
            and not _batched_only
            and v.device.type == "cpu"
            and v.dtype == self.weight_t.dtype
            and v.dtype in packable_dtypes()
            and packing_available(LINEAR_OPS)
            and not (torch.is_grad_enabled() and v.requires_grad)
            and not torch.compiler.is_compiling()
        ):
            return torch.bmm(v, self.weight_t)
        planes = self._packed_once(
            (tiles, v.dtype, weights_version(self.weight_t)),
            lambda: [
                torch.ops.mkldnn._reorder_linear_weight(w.t().contiguous(), tiles)
                for w in self.weight_t
            ],
        )
        return torch.stack(
            [
                torch.ops.mkldnn._linear_pointwise(plane, w, None, "none", [], "")
                for plane, w in zip(v, planes, strict=True)
            ]
        )

    def extra_repr(self) -> str:
        m = self.tile
        return f"{self.in_channels}, {self.out_channels}, F({m}×{m}, 3×3), {self.compute_dtype}"


def winograd_convs(
    model: nn.Module, compute_dtype: torch.dtype, min_channels: int, tile: int = 2
) -> int:
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
        setattr(parent, name, WinogradConv2d(child, compute_dtype, tile))
    return len(targets)
