"""Optimiser and learning-rate schedule: what turns gradients into steps."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def build_optimizer(params: Iterable[nn.Parameter], cfg: dict[str, Any]) -> torch.optim.Optimizer:
    """Adam, AdamW or SGD, fused where PyTorch has a fused kernel for the device: on CPU
    the default is a per-tensor Python loop, which for 147 M parameters costs a large
    fixed share of a small-batch step."""
    params = list(params)
    devices = {p.device.type for p in params}
    kwargs: dict[str, Any] = {"lr": cfg["lr"], "weight_decay": cfg["weight_decay"]}
    if devices <= {"cpu", "cuda"} and len(devices) == 1:
        kwargs["fused"] = True
    name = cfg["optimizer"].lower()
    if name == "adam":
        return torch.optim.Adam(params, **kwargs)
    if name == "adamw":
        return torch.optim.AdamW(params, **kwargs)
    if name == "sgd":
        return torch.optim.SGD(params, momentum=0.9, **kwargs)
    raise ValueError(f"optimizer must be adam, adamw or sgd; got {cfg['optimizer']!r}")


def lr_factor(step: int, cfg: dict[str, Any], steps_per_epoch: int, total_steps: int) -> float:
    """Learning-rate multiplier at an optimiser step: linear warm-up, then cosine to
    ``min_lr_ratio``, step decay every ``step_epochs``, or constant."""
    warm = cfg["warmup_steps"]
    if warm > 0 and step < warm:
        return (step + 1) / warm
    kind = cfg["scheduler"]
    if kind == "cosine":
        span = max(1, total_steps - warm)
        done = min(1.0, (step - warm) / span)
        floor = cfg["min_lr_ratio"]
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * done))
    if kind == "step":
        return cfg["gamma"] ** ((step // max(1, steps_per_epoch)) // max(1, cfg["step_epochs"]))
    if kind == "none":
        return 1.0
    raise ValueError(f"scheduler must be cosine, step or none; got {kind!r}")


def scaler_step(scaler: torch.amp.GradScaler, optimizer: torch.optim.Optimizer) -> bool:
    """``scaler.step`` and ``scaler.update``; True when the step was skipped. Why: fp16's
    gradient scaler skips a step whose gradients are not finite and only halves its scale
    to show it; counting those steps is how a run that has lost its gradients (with finite
    losses) is seen."""
    before = scaler.get_scale() if scaler.is_enabled() else None
    scaler.step(optimizer)
    scaler.update()
    return before is not None and scaler.get_scale() < before


def freeze_unused(model: nn.Module) -> None:
    """The backbones' ``fc`` layers exist only for checkpoint compatibility; freezing them
    keeps DDP from waiting for gradients that never come."""
    for name, p in model.named_parameters():
        if name.endswith(("model.fc.weight", "model.fc.bias")):
            p.requires_grad_(False)
