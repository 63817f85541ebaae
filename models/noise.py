"""Noise-sensitive branch: grayscale, BayarConv2d, and a second ResNet."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.backbone import build_resnet

# Luma weights applied to channels (2, 1, 0) of the BGR-ordered normalised input, as
# the release does (channel 2 is R).
_GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)


def rgb_to_gray(x: torch.Tensor) -> torch.Tensor:
    """Grayscale of a BGR batch (N, ≥3, H, W) → (N, 1, H, W)."""
    r, g, b = x[:, 2], x[:, 1], x[:, 0]
    w_r, w_g, w_b = _GRAY_WEIGHTS
    return (w_r * r + w_g * g + w_b * b).unsqueeze(1)


class BayarConv2d(nn.Module):
    """Constrained convolution (Bayar & Stamm): off-centre weights sum to 1, centre −1.

    The stored parameter ``kernel`` has shape (in, out, k²−1) as in the official
    checkpoint. The release renormalises it in place at every forward; we normalise on
    the fly instead, which gives the same output without mutating parameters (safe
    under DDP and autograd).
    """

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 5, padding: int = 2
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = kernel_size
        self.padding = padding
        self.kernel = nn.Parameter(torch.rand(in_channels, out_channels, kernel_size**2 - 1))

    def effective_kernel(self) -> torch.Tensor:
        """The constrained (out, in, k, k) kernel actually convolved."""
        normalised = self.kernel / self.kernel.sum(dim=2, keepdim=True)
        centre = (self.kernel_size**2) // 2
        minus_one = -torch.ones_like(normalised[:, :, :1])
        full = torch.cat((normalised[:, :, :centre], minus_one, normalised[:, :, centre:]), 2)
        # The release reshapes (in, out, k²) straight to (out, in, k, k); keep that layout.
        k = self.kernel_size
        return full.reshape(self.out_channels, self.in_channels, k, k)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.effective_kernel().to(x.dtype)
        return F.conv2d(x, weight, stride=1, padding=self.padding)


class NoiseExtractor(nn.Module):
    """Second ResNet over the Bayar residuals; only its last stage (c4) is used."""

    def __init__(self, backbone: str, in_channels: int = 3) -> None:
        super().__init__()
        self.model = build_resnet(backbone, in_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[-1]
