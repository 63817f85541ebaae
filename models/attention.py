"""Dual-attention fusion head (DANet): position attention + channel attention."""

from __future__ import annotations

import torch
from torch import nn


def _energy(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` for an attention energy, in fp32 wherever it would be fp16.

    Why: fp16 tops out at 65504 and a channel-attention energy sums HW squared
    activations (4096 of them at a 512² input): under fp16 autocast it became inf, the
    row maximum minus it NaN, and the whole map NaN (seen on a GPU). bf16 and fp32 share
    fp32's range and keep the plain product (the release's arithmetic in fp32)."""
    device = a.device.type
    fp16 = a.dtype == torch.float16 or (
        torch.is_autocast_enabled(device) and torch.get_autocast_dtype(device) == torch.float16
    )
    if not fp16:
        return torch.bmm(a, b)
    with torch.autocast(device, enabled=False):
        return torch.bmm(a.float(), b.float())


class PositionAttention(nn.Module):
    """Each position attends to every other: out = α·(D·Aᵀ) + x, A = softmax(Bᵀ·C)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.zeros(1))
        self.conv_b = nn.Conv2d(channels, channels // 8, 1)
        self.conv_c = nn.Conv2d(channels, channels // 8, 1)
        self.conv_d = nn.Conv2d(channels, channels, 1)
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        query = self.conv_b(x).flatten(2).transpose(1, 2)  # N × HW × C'
        key = self.conv_c(x).flatten(2)  # N × C' × HW
        attention = self.softmax(_energy(query, key))  # N × HW × HW
        value = self.conv_d(x).flatten(2)  # N × C × HW
        attention = attention.to(value.dtype)  # weights in [0, 1]: any float type holds them
        out = torch.bmm(value, attention.transpose(1, 2)).view(n, c, h, w)
        return self.alpha * out + x


class ChannelAttention(nn.Module):
    """Channels attend to channels: out = β·(A·X) + x, A = softmax(rowmax(E) − E)."""

    def __init__(self) -> None:
        super().__init__()
        self.beta = nn.Parameter(torch.zeros(1))
        self.softmax = nn.Softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        flat = x.flatten(2)  # N × C × HW
        energy = _energy(flat, flat.transpose(1, 2))  # N × C × C
        energy = energy.amax(dim=-1, keepdim=True) - energy
        attention = self.softmax(energy).to(flat.dtype)
        out = torch.bmm(attention, flat).view(n, c, h, w)
        return self.beta * out + x


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _classifier(in_channels: int, nclass: int) -> nn.Sequential:
    return nn.Sequential(nn.Dropout(0.1), nn.Conv2d(in_channels, nclass, 1))


class DAHead(nn.Module):
    """Two attention paths on the fused features, summed, then a 1×1 classifier."""

    def __init__(self, in_channels: int, nclass: int, aux: bool = False) -> None:
        super().__init__()
        inter = in_channels // 4
        self.aux = aux
        self.inter_channels = inter
        self.conv_p1 = _conv_bn_relu(in_channels, inter)
        self.conv_c1 = _conv_bn_relu(in_channels, inter)
        self.pam = PositionAttention(inter)
        self.cam = ChannelAttention()
        self.conv_p2 = _conv_bn_relu(inter, inter)
        self.conv_c2 = _conv_bn_relu(inter, inter)
        self.out = _classifier(inter, nclass)
        if aux:
            self.conv_p3 = _classifier(inter, nclass)
            self.conv_c3 = _classifier(inter, nclass)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns ``seg`` logits, the ``fused`` features, and ``aux_p``/``aux_c`` if aux."""
        p = self.conv_p2(self.pam(self.conv_p1(x)))
        c = self.conv_c2(self.cam(self.conv_c1(x)))
        fused = p + c
        result = {"seg": self.out(fused), "fused": fused}
        if self.aux:
            result["aux_p"] = self.conv_p3(p)
            result["aux_c"] = self.conv_c3(c)
        return result
