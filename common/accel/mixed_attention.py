"""The dual-attention blocks for the bf16 fast path: fp32 where the range matters, bf16
where only the rate does.

Why: run wholly in fp32 (as the fast path did), PAM and CAM were a fifth of a 512²
forward on CPU while holding 4 % of its FLOPs: fp32 matrix products run at a quarter of
the bf16 rate here. Only the attention *energies* need fp32: they feed a softmax (and, in
CAM, a row maximum minus the energy), where a bf16 rounding of a large logit shifts a
weight by a factor e^(error). The attention weights themselves lie in [0, 1] and the
values are bf16 activations already, so the weighted sums (half of PAM's FLOPs and half of
CAM's) and PAM's 1×1 value projection run in bf16 with fp32 accumulation, like every
other convolution of the fast path.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from models.attention import ChannelAttention, PositionAttention


def _fp32_copy(module: nn.Module) -> nn.Module:
    return copy.deepcopy(module).float()


class MixedPositionAttention(nn.Module):
    """PositionAttention with fp32 query, key, energy and softmax; bf16 value and sum."""

    def __init__(self, block: PositionAttention, dtype: torch.dtype) -> None:
        super().__init__()
        self.conv_b, self.conv_c = _fp32_copy(block.conv_b), _fp32_copy(block.conv_c)
        self.conv_d = copy.deepcopy(block.conv_d).to(dtype)
        self.alpha = float(block.alpha)
        self.dtype = dtype

    def _apply(self, fn, recurse=True):
        dtypes = {m: m.weight.dtype for m in (self.conv_b, self.conv_c, self.conv_d)}
        super()._apply(fn, recurse)
        for m, dtype in dtypes.items():
            m.to(dtype)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        with torch.autocast(x.device.type, enabled=False):
            x32 = x.float()
            query = self.conv_b(x32).flatten(2).transpose(1, 2)  # N × HW × C'
            key = self.conv_c(x32).flatten(2)  # N × C' × HW
            attention = torch.softmax(torch.bmm(query, key), dim=-1).to(self.dtype)
            value = self.conv_d(x.to(self.dtype)).flatten(2)  # N × C × HW
            out = torch.bmm(value, attention.transpose(1, 2)).view(n, c, h, w)
            return torch.add(x, out.to(x.dtype), alpha=self.alpha)


class MixedChannelAttention(nn.Module):
    """ChannelAttention with an fp32 energy and softmax; the weighted sum in bf16."""

    def __init__(self, block: ChannelAttention, dtype: torch.dtype) -> None:
        super().__init__()
        self.beta = float(block.beta)
        self.dtype = dtype

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        with torch.autocast(x.device.type, enabled=False):
            flat = x.flatten(2)  # N × C × HW
            flat32 = flat.float()
            energy = torch.bmm(flat32, flat32.transpose(1, 2))  # N × C × C
            energy = energy.amax(dim=-1, keepdim=True) - energy
            attention = torch.softmax(energy, dim=-1).to(self.dtype)
            out = torch.bmm(attention, flat.to(self.dtype)).view(n, c, h, w)
            return torch.add(x, out.to(x.dtype), alpha=self.beta)


def mixed_attention(block: nn.Module, dtype: torch.dtype) -> nn.Module:
    """The mixed-precision stand-in for a PAM or CAM block."""
    if isinstance(block, PositionAttention):
        return MixedPositionAttention(block, dtype)
    if isinstance(block, ChannelAttention):
        return MixedChannelAttention(block, dtype)
    raise TypeError(f"not an attention block: {type(block).__name__}")
