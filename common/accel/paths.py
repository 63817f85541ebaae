"""The named inference paths the benchmarks and the profiler compare.

Why a module of its own: it sits above both the fast path and the int8 path (which builds
on the fast path), so neither of those has to import the other back.
"""

from __future__ import annotations

import torch
from torch import nn

from common.accel.fast_path import WINOGRAD_TILE, optimize_for_inference
from common.accel.int8 import quantize_for_inference

# The named inference paths the benchmarks and the profiler compare (the CLI builds the
# same ones from --fast, --amp, --channels-last, --winograd and --int8).
PATH_NAMES = ("fast-fp32", "fast-bf16", "fast-winograd", "fast-winograd4", "int8", "int8-winograd4")


def inference_path(
    model: nn.Module, name: str, calibration: torch.Tensor | None = None
) -> nn.Module:
    """The inference-only copy of ``model`` that path ``name`` runs; ``int8`` calibrates
    its activation scales on ``calibration`` (normalised images)."""
    if name == "fast-fp32":
        return optimize_for_inference(model)
    if name == "fast-bf16":
        return optimize_for_inference(model, torch.bfloat16, True)
    if name == "fast-winograd":
        return optimize_for_inference(model, torch.bfloat16, True, winograd=True)
    if name == "fast-winograd4":
        return optimize_for_inference(model, torch.bfloat16, True, winograd=True, winograd_tile=4)
    if name in ("int8", "int8-winograd4"):
        if calibration is None:
            raise ValueError("the int8 path needs calibration images")
        tile = 4 if name == "int8-winograd4" else WINOGRAD_TILE
        return quantize_for_inference(model, calibration, winograd_tile=tile)
    raise ValueError(f"unknown path {name!r}; choose one of {', '.join(PATH_NAMES)}")
