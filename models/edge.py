"""Edge-supervised branch: Sobel gates and edge residual blocks (ERB).

The official checkpoint stores these modules at the top level of the network
(``sobel_x1``, ``erb_db_1``, ...), so this file builds them as a name → module dict that
:class:`models.mvssnet.MVSSNet` registers on itself, and runs them with
:func:`edge_forward`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

SOBEL_X = ((1.0, 0.0, -1.0), (2.0, 0.0, -2.0), (1.0, 0.0, -1.0))
SOBEL_Y = ((1.0, 2.0, 1.0), (0.0, 0.0, 0.0), (-1.0, -2.0, -1.0))
# Keeps the gradient of sqrt finite where both Sobel responses are exactly zero.
_MAGNITUDE_EPS = 1e-12


def sobel_filter(in_channels: int, kernel: tuple[tuple[float, ...], ...]) -> nn.Sequential:
    """Fixed Sobel conv (kernel repeated over all input channels) followed by BatchNorm(1)."""
    conv = nn.Conv2d(in_channels, 1, 3, padding=1, bias=False)
    weight = torch.tensor(kernel).expand(1, in_channels, 3, 3).clone()
    conv.weight = nn.Parameter(weight, requires_grad=False)
    return nn.Sequential(conv, nn.BatchNorm2d(1))


def sobel_gate(feature: torch.Tensor, sobel_x: nn.Module, sobel_y: nn.Module) -> torch.Tensor:
    """Weight a feature map by sigmoid of its Sobel gradient magnitude.

    The magnitude is computed in fp32 where it would be fp16. Why: fp16 flushes
    ``_MAGNITUDE_EPS`` (and squares under 6e-8) to zero, so wherever both responses are
    zero the square root's gradient was inf·0 = NaN. Under fp16 training on a GPU every
    such step was skipped by the gradient scaler, which halved its scale each time until
    every gradient underflowed and the demo recipe stopped learning (bf16 and fp32 keep
    the epsilon: their arithmetic is unchanged)."""
    gx = sobel_x(feature)
    gy = sobel_y(feature)
    if gx.dtype == torch.float16:
        gx, gy = gx.float(), gy.float()
    magnitude = torch.sqrt(gx * gx + gy * gy + _MAGNITUDE_EPS)
    return torch.sigmoid(magnitude).to(feature.dtype) * feature


class ERB(nn.Module):
    """Edge residual block: 1×1 projection, then a 3×3-BN-ReLU-3×3 residual."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.bn = nn.BatchNorm2d(out_channels)
        self.conv3 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor, relu: bool = True) -> torch.Tensor:
        x = self.conv1(x)
        res = self.conv3(self.relu(self.bn(self.conv2(x))))
        return self.relu(x + res) if relu else x + res


def edge_modules(
    stage_channels: Sequence[int], out_channels: int, sobel: bool
) -> dict[str, nn.Module]:
    """Modules of the edge branch, in the official checkpoint's registration order."""
    modules: dict[str, nn.Module] = {}
    for i, ch in enumerate(stage_channels, start=1):
        modules[f"erb_db_{i}"] = ERB(ch, out_channels)
    for i in range(1, len(stage_channels)):
        modules[f"erb_trans_{i}"] = ERB(out_channels, out_channels)
    if sobel:
        for i, ch in enumerate(stage_channels, start=1):
            modules[f"sobel_x{i}"] = sobel_filter(ch, SOBEL_X)
            modules[f"sobel_y{i}"] = sobel_filter(ch, SOBEL_Y)
    return modules


def _resize_to(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Bilinear, align_corners=True, to an exact size.

    With align_corners=True the sampling grid depends only on the sizes, so this equals
    the release's fixed ×2/×4 upsampling wherever that fits, and stays valid where it
    does not (sides that are not multiples of 16).
    """
    if x.shape[-2:] == size:
        return x
    return F.interpolate(x, size=size, mode="bilinear", align_corners=True)


def edge_forward(
    modules: Mapping[str, nn.Module], features: Sequence[torch.Tensor], sobel: bool
) -> torch.Tensor:
    """Run the edge branch on c1..c4; the result (logits) is at c1's resolution (1/4)."""

    def stage(i: int) -> torch.Tensor:
        feat = features[i - 1]
        if sobel:
            feat = sobel_gate(feat, modules[f"sobel_x{i}"], modules[f"sobel_y{i}"])
        return modules[f"erb_db_{i}"](feat)

    size = features[0].shape[-2:]
    edge = stage(1)
    last = len(features)
    for i in range(2, last + 1):
        merged = edge + _resize_to(stage(i), size)
        edge = modules[f"erb_trans_{i - 1}"](merged, relu=i != last)
    return edge
