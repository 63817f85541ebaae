"""The edge branch's Sobel gate and first ERB convolution as one pass over each feature.

Why: per stage the branch read the wide feature map (c1: 256 × H/4 × W/4) three times —
the two Sobel convolutions (C→1 each) and, after gating it by sigmoid(|∇|), the ERB's 1×1
projection (C→1) — and wrote the gated copy once. The projection is linear and the gate
is one number per pixel, so W·(s·f) + b = s·(W·f) + b: one 3×3 convolution C→3 (Sobel x,
Sobel y, and the projection as the centre tap) reads the feature once, and everything
after it works on 1-channel maps. Exact in real arithmetic; only the rounding order of
the sums changes.
"""

from __future__ import annotations

import torch
from torch import nn

from models.edge import _MAGNITUDE_EPS, ERB


def _conv_of(sobel: nn.Module) -> nn.Conv2d:
    """The (BatchNorm-folded) Sobel convolution of a ``sobel_filter`` Sequential."""
    conv = sobel[0]
    if any(not isinstance(m, (nn.Conv2d, nn.Identity)) for m in sobel):
        raise ValueError("fold the Sobel BatchNorm first")
    return conv


class GatedERB(nn.Module):
    """``ERB(sobel_gate(feature))`` with the gate and the 1×1 projection fused."""

    def __init__(self, sobel_x: nn.Module, sobel_y: nn.Module, erb: ERB) -> None:
        super().__init__()
        sx, sy, proj = _conv_of(sobel_x), _conv_of(sobel_y), erb.conv1
        c = proj.in_channels
        if proj.out_channels != 1 or sx.in_channels != c:
            raise ValueError("fusing needs a 1-channel edge projection")
        weight = torch.zeros(3, c, 3, 3, dtype=proj.weight.dtype)
        bias = torch.zeros(3, dtype=proj.weight.dtype)
        with torch.no_grad():
            weight[0], weight[1] = sx.weight[0], sy.weight[0]
            weight[2, :, 1, 1] = proj.weight[0, :, 0, 0]
            bias[0] = sx.bias[0] if sx.bias is not None else 0.0
            bias[1] = sy.bias[0] if sy.bias is not None else 0.0
        self.fused = nn.Conv2d(c, 3, 3, padding=1)
        self.fused.weight = nn.Parameter(weight, requires_grad=False)
        self.fused.bias = nn.Parameter(bias, requires_grad=False)
        self.proj_bias = nn.Parameter(proj.bias.detach().clone(), requires_grad=False)
        self.conv2, self.bn, self.conv3, self.relu = erb.conv2, erb.bn, erb.conv3, erb.relu

    def forward(self, feature: torch.Tensor, relu: bool = True) -> torch.Tensor:
        y = self.fused(feature)
        gx, gy, z = y[:, 0:1], y[:, 1:2], y[:, 2:3]
        gate = torch.sigmoid(torch.sqrt(gx * gx + gy * gy + _MAGNITUDE_EPS))
        x = gate * z + self.proj_bias.view(1, -1, 1, 1)
        res = self.conv3(self.relu(self.bn(self.conv2(x))))
        return self.relu(x + res) if relu else x + res


def fuse_edge_gates(net: nn.Module) -> int:
    """Replace each stage's Sobel gate + ``erb_db_i`` by a :class:`GatedERB` and switch
    the network's own gating off (so ``edge_forward`` hands it the raw feature). Needs
    BatchNorm folded. Returns how many stages were fused."""
    if not getattr(net, "sobel", False):
        return 0
    n = 0
    while f"erb_db_{n + 1}" in net._modules:
        i = n + 1
        gated = GatedERB(
            net._modules[f"sobel_x{i}"], net._modules[f"sobel_y{i}"], net._modules[f"erb_db_{i}"]
        )
        net._modules[f"erb_db_{i}"] = gated
        n = i
    net.sobel = False  # the gates now live inside the fused ERBs
    return n
