"""Convolutions whose weights are laid out once for the CPU kernel that runs them.

Why: PyTorch hands oneDNN a convolution's weights in their plain (or channels_last) layout,
and oneDNN's fast kernels read them in a blocked layout that depends on the kernel it picks
(itself chosen from the input's shape and the CPU's ISA: AMX, AVX-512 BF16/VNNI, AVX2).
So every eager call re-lays the weights out (a ``reorder`` per convolution and call in
``ONEDNN_VERBOSE=1``): for the bf16 ResNet-50 MVSS-Net that is over a hundred weight
copies per forward, on Intel AMX and AMD AVX-512 CPUs alike. Packed once per input shape
with ``mkldnn._reorder_convolution_weight`` and run by ``mkldnn._convolution_pointwise``
(the pair PyTorch's own compiler uses for frozen CPU graphs), the convolution computes the
same kernel on the same data: the outputs are bit-identical, only the copy is gone.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import nn

# Input shapes each convolution (bf16 or int8) keeps packed weights for (a run sees one or
# two: full batches and the last one, or tiles and their edge remainders).
PACKED_SHAPES = 4

# What a module keeps packed: a tensor, or one per plane (common/accel/winograd.py).
Packed = TypeVar("Packed")


# The oneDNN operators that pack and run convolutions, and linear layers.
CONVOLUTION_OPS = ("_reorder_convolution_weight", "_convolution_pointwise")
LINEAR_OPS = ("_reorder_linear_weight", "_linear_pointwise")


@functools.cache
def packing_available(ops: tuple[str, ...] = CONVOLUTION_OPS) -> bool:
    """True when this PyTorch build has oneDNN and the CPU operators ``ops`` (those of
    convolutions by default)."""
    return torch.backends.mkldnn.is_available() and all(
        hasattr(torch.ops.mkldnn, name) for name in ops
    )


def weights_version(weight: torch.Tensor) -> int:
    """Part of a packing's key: weights edited in place must be packed again (inference
    tensors cannot be edited, and have no version counter)."""
    return 0 if weight.is_inference() else weight._version


@functools.cache
def packable_dtypes() -> frozenset[torch.dtype]:
    """The dtypes packed on this CPU: bf16, where oneDNN runs it (AVX-512 BF16, AMX or
    AVX-NE-CONVERT); elsewhere PyTorch runs it its own way, which packing leaves alone."""
    dtypes = set()
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        dtypes.add(torch.bfloat16)
    return frozenset(dtypes)


class PacksWeights(nn.Module):
    """A module that keeps its weights packed (oneDNN's opaque tensors, or a list of them)
    for the few most recent input shapes it met: the bf16 convolutions here, the int8 ones
    (``common/accel/int8.py``) and the F(4×4) Winograd planes (``common/accel/winograd.py``).
    A move or cast drops them; copies and pickles leave them behind (opaque tensors cannot
    be copied); either way they are packed again on first use."""

    # How many packings a module keeps (one per input shape, the oldest dropped first).
    max_packed = PACKED_SHAPES

    def __init__(self) -> None:
        super().__init__()
        self._packed: dict[tuple, torch.Tensor] = {}

    def _apply(self, fn, recurse=True):  # .to(dtype / device / memory format): repack
        self._packed = {}
        return super()._apply(fn, recurse)

    def __getstate__(self) -> dict:
        return {**super().__getstate__(), "_packed": {}}

    def _packed_once(self, key: tuple, pack: Callable[[], Packed]) -> Packed:
        """The weights packed for ``key`` (an input shape, and whatever else decides the
        layout), made by ``pack()`` the first time; the oldest are dropped before a new one
        is made past ``max_packed`` (so a large packing is never held twice)."""
        packed = self._packed.get(key)
        if packed is None:
            while len(self._packed) >= self.max_packed:
                self._packed.pop(next(iter(self._packed), None), None)
            packed = pack()
            self._packed[key] = packed
        return packed


class PackedConv2d(PacksWeights):
    """An inference-only ``nn.Conv2d`` (same weights, same outputs) that packs its weights
    for each CPU input shape it meets; elsewhere (CUDA, autograd, other dtypes) it is a
    plain ``F.conv2d``."""

    def __init__(self, conv: nn.Conv2d) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise ValueError("packing needs numeric zero padding")
        self.weight = nn.Parameter(conv.weight.detach(), requires_grad=False)
        bias = conv.bias.detach() if conv.bias is not None else None
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.in_channels, self.out_channels = conv.in_channels, conv.out_channels
        self.kernel_size = conv.kernel_size
        self.stride, self.padding = list(conv.stride), list(conv.padding)
        self.dilation, self.groups = list(conv.dilation), conv.groups

    def _packable(self, x: torch.Tensor) -> bool:
        """bf16 on the CPU with channels_last weights, outside autograd and graph capture:
        where PyTorch itself runs oneDNN's kernels on a channels_last copy of the input,
        so packing changes no output bit and no memory format (for fp32, PyTorch runs some
        narrow convolutions its own way)."""
        return (
            x.device.type == "cpu"
            and self.weight.device.type == "cpu"
            and x.dtype == self.weight.dtype
            and x.dtype in packable_dtypes()
            and x.dim() == 4
            and self.weight.is_contiguous(memory_format=torch.channels_last)
            and not (torch.is_grad_enabled() and x.requires_grad)
            and not torch.compiler.is_compiling()
        )

    def packed_for(self, shape: tuple[int, ...]) -> torch.Tensor:
        """The weights laid out for the kernel oneDNN picks for inputs of ``shape``."""
        key = (shape, self.weight.dtype, weights_version(self.weight))
        return self._packed_once(
            key,
            lambda: torch.ops.mkldnn._reorder_convolution_weight(
                self.weight, self.padding, self.stride, self.dilation, self.groups, list(shape)
            ),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self._packable(x):
            return F.conv2d(
                x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups
            )
        x = x.contiguous(memory_format=torch.channels_last)  # as PyTorch's own call does
        packed = self.packed_for(tuple(x.shape))
        args = (self.padding, self.stride, self.dilation, self.groups)
        return torch.ops.mkldnn._convolution_pointwise(x, packed, self.bias, *args, "none", [], "")

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={tuple(self.kernel_size)}, "
            f"stride={tuple(self.stride)}, padding={tuple(self.padding)}"
        )


def pack_convolutions(model: nn.Module) -> int:
    """Replace every plain ``nn.Conv2d`` in ``model`` (an inference-only copy) by a
    :class:`PackedConv2d`, in place; returns how many. A no-op where the build lacks
    oneDNN."""
    if not packing_available():
        return 0
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if type(child) is nn.Conv2d
        and child.padding_mode == "zeros"
        and not isinstance(child.padding, str)
    ]
    for parent, name, child in targets:
        setattr(parent, name, PackedConv2d(child))
    return len(targets)


def unpack_convolutions(model: nn.Module) -> int:
    """The inverse of :func:`pack_convolutions`, in place: plain ``nn.Conv2d`` layers with
    the same weights (for tools that read ATen's convolutions, e.g. FLOP counters)."""
    targets = [
        (parent, name, child)
        for parent in model.modules()
        for name, child in parent.named_children()
        if isinstance(child, PackedConv2d)
    ]
    for parent, name, child in targets:
        conv = nn.Conv2d(
            child.in_channels,
            child.out_channels,
            tuple(child.kernel_size),
            tuple(child.stride),
            tuple(child.padding),
            tuple(child.dilation),
            child.groups,
            child.bias is not None,
            device=child.weight.device,
            dtype=child.weight.dtype,
        )
        conv.weight = child.weight
        conv.bias = child.bias
        setattr(parent, name, conv)
    return len(targets)
