"""Shared pieces of the benchmarks: real-looking inputs, calibrated random models, the
one timing loop (:func:`interleaved_medians`), the one FLOP counter (:func:`count_flops`)
and where results go."""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from common.accel.winograd import batched_products_only
from common.core.user_errors import UsageError, require_file
from common.data.transforms import normalize_bgr_batch
from common.synth.forgery import SyntheticConfig, make_sample
from common.synth.photos import bundled_photos
from models import get_mvss

ROOT = Path(__file__).resolve().parents[1]


def synthetic_images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """``n`` synthetic forgeries (real photographs, manipulated), uint8 BGR (n, s, s, 3)."""
    photos = bundled_photos()
    rng = np.random.default_rng(seed)
    cfg = SyntheticConfig(size=size, authentic_ratio=0.3)
    return np.stack([make_sample(photos, cfg, rng).image for _ in range(n)])


def int_pair(text: str) -> str:
    """An option value ``AxB`` of two positive integers (a size, or size×batch), kept as
    text for the subprocess command lines it goes into."""
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected AxB with two positive integers, got {text!r}")
    return text.lower()


def calibrated_model(
    backbone: str = "resnet50",
    size: int = 512,
    seed: int = 0,
    calibrate: bool = False,
    weights: str | None = None,
) -> torch.nn.Module:
    """The model to time: random initialisation (as the release's model was measured), or
    ``weights`` from a checkpoint; ``calibrate`` takes BatchNorm statistics from real
    images and switches the attention gains on (maps near 0.5: a harsher accuracy check)."""
    torch.manual_seed(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = get_mvss(backbone=backbone)
    if weights:
        from models import WeightsError, load_weights

        require_file(weights, "checkpoint", "--weights")
        try:
            load_weights(net, weights)
        except WeightsError as exc:
            raise UsageError(
                f"cannot use this checkpoint: {exc.reason}", f"--weights {weights}"
            ) from exc
        return net.eval()
    if not calibrate:
        return net.eval()
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average over the calibration batches
    net.train()
    images = synthetic_images(4, size, seed=seed + 1)
    with torch.no_grad():
        for img in images:
            net(normalize_bgr_batch(torch.from_numpy(img[None])))
    with torch.no_grad():  # attention gains on, so that path is exercised too
        net.head.pam.alpha.fill_(0.5)
        net.head.cam.beta.fill_(0.5)
    return net.eval()


def map_accuracy(
    paths: dict[str, Callable[[torch.Tensor], tuple[torch.Tensor, ...]]],
    reference: str,
    images: torch.Tensor,
) -> dict[str, dict[str, float]]:
    """Each path's probability maps against the ``reference`` path's, one image at a time:
    mean and max absolute difference in 1/255 units and binary agreement at 0.5."""

    def maps(fn: Callable[[torch.Tensor], tuple[torch.Tensor, ...]]) -> torch.Tensor:
        with torch.inference_mode():
            return torch.cat(
                [torch.sigmoid(fn(images[i : i + 1])[1].float()) for i in range(len(images))]
            )

    ref = maps(paths[reference])
    accuracy = {}
    for name, fn in paths.items():
        got = maps(fn)
        diff = (got - ref).abs() * 255
        accuracy[name] = {
            "mean_abs_255": float(diff.mean()),
            "max_abs_255": float(diff.max()),
            "binary_agreement": float(((got > 0.5) == (ref > 0.5)).float().mean()),
        }
    return accuracy


def write_result(name: str, data: dict) -> Path:
    """Write a benchmark's JSON to bench/results/<name>.json and say where."""
    import json

    out = ROOT / "bench" / "results" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2))
    print(f"written {out}")
    return out


def bench_device(name: str = "auto") -> torch.device:
    """A benchmark's ``--device``: ``auto`` is the GPU when there is one, so the same
    command takes CPU figures here and GPU figures on a GPU machine."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError("no CUDA device here", f"--device {name}", "use --device cpu")
    return torch.device(name)


def synchronize(device: torch.device | None) -> None:
    """Wait for queued GPU work, so a timer around a call measures the call."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved_medians(
    fns: dict[str, Callable[[], None]],
    runs: int = 5,
    warmup: int = 1,
    device: torch.device | None = None,
) -> dict[str, float]:
    """Median seconds per call of each function, runs interleaved so drift hits all
    (GPU work synchronised before each timer stops)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    synchronize(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(runs):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            synchronize(device)
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def count_flops(
    model: nn.Module, x: torch.Tensor, parts: Mapping[nn.Module, str] | None = None
) -> dict[str, float]:
    """FLOPs of one forward of ``model`` on ``x`` (2 per multiply-add), counted from the
    dispatched operators by ``FlopCounterMode`` (matrix products and convolutions; an
    operator it has no formula for counts 0): ``{"total": …}``, plus, for each label of
    ``parts`` (module → label; modules sharing a label add up), the FLOPs inside them."""
    totals: dict[str, float] = {}
    with contextlib.ExitStack() as stack:
        stack.enter_context(batched_products_only())  # Winograd planes: torch.bmm, counted
        for module, label in (parts or {}).items():
            inner: list[FlopCounterMode] = []

            def pre(_m: nn.Module, _a: object, inner: list = inner) -> None:
                inner.append(FlopCounterMode(display=False))
                inner[-1].__enter__()

            def post(_m: nn.Module, _a: object, _o: object, inner=inner, label=label) -> None:
                counter = inner.pop()
                counter.__exit__(None, None, None)
                totals[label] = totals.get(label, 0.0) + counter.get_total_flops()

            stack.callback(module.register_forward_pre_hook(pre).remove)
            stack.callback(module.register_forward_hook(post).remove)
        whole = FlopCounterMode(display=False)
        with torch.inference_mode(), whole:
            model(x)
    return {"total": float(whole.get_total_flops()), **totals}
