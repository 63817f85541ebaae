"""What the networks return: named tuples, so callers read ``out.seg`` and ``out.cls``
instead of counting positions, and ``edge, seg = net(x)`` (the release's call) still works.

Both are ``typing.NamedTuple``: torch's pytree flattens them, so DDP, ``torch.compile``
and export see every tensor in them (a home-made tuple subclass would be an opaque leaf).
The classifier's type has the same ``edge`` and ``seg`` fields plus ``cls``, so code that
needs the maps does not care which network it has.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class MVSSOutput(NamedTuple):
    """MVSS-Net: edge logits (N, 1, ⌈H/4⌉, ⌈W/4⌉) and seg logits (N, nclass, H, W)."""

    edge: torch.Tensor
    seg: torch.Tensor


class MVSSClsOutput(NamedTuple):
    """The classifier: MVSS-Net's two maps plus ``cls``, the image output: P(manipulated)
    (N,) with the max head, or logits (N, K) with the linear head."""

    edge: torch.Tensor
    seg: torch.Tensor
    cls: torch.Tensor


ModelOutput = MVSSOutput | MVSSClsOutput


def cast_output(out: ModelOutput, dtype: torch.dtype) -> ModelOutput:
    """The same output type with every tensor in ``dtype`` (absent parts stay None; a
    plain tuple from some other network stays a tuple)."""
    values = [None if t is None else t.to(dtype) for t in out]
    return type(out)(*values) if hasattr(out, "_fields") else tuple(values)  # type: ignore[return-value]
