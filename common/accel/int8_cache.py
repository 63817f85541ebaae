"""Calibration images, the cached calibration file, and the printed accuracy cost of the
int8 path (``--int8``).

Why a cache: calibrating a ResNet-50 model runs the fp32 model over every calibration
image with histogram observers (tens of seconds); the scales depend only on the
checkpoint, the images and the input size, so they are saved once (a small file of
numbers, loaded with ``weights_only=True``) and reused while those three match. The
cache also keeps what the int8 path cost on the calibration images (maps against fp32),
which is printed at every use: int8 is opt-in because it does not always hold the bars.
It also keeps, per CPU kind (the CPU's kernel features, see
:func:`common.core.runtime.cpu_kernel_signature`), how much faster the int8 path ran than the
fast path: where it does not pay, ``--int8`` says so in one line and runs the fast path.
"""

from __future__ import annotations

import hashlib
import logging
import os
import statistics
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from torch import nn

from common.accel.fast_path import WINOGRAD_TILE, optimize_for_inference
from common.accel.int8 import Qparams, quantize_for_inference
from common.core import distributed as dist
from common.core.checkpoint import checkpoint_digest, save_checkpoint
from common.core.runtime import cpu_kernel_signature
from common.core.scores import manipulated_probability, probabilities
from common.core.user_errors import UsageError
from common.data.decode import BadInputError, read_image
from common.data.sources import load_source
from common.data.transforms import normalize_bgr_batch

log = logging.getLogger("mvss")

DEFAULT_CALIBRATION_IMAGES = 8
BUNDLED = "bundled"  # synthetic forgeries cut from the bundled photographs
# The cached cost and speed gains were measured on the path: a new stage split or packing
# is a new version (4: int8 weights packed for the kernel that runs).
_CACHE_VERSION = 4
# The int8 path runs only where it is measurably faster than the fast path it replaces
# (its gain is bounded: a quarter of the FLOPs run in int8); elsewhere the fast path runs.
INT8_MIN_GAIN = 1.05


def calibration_images(source: str, count: int, size: int) -> tuple[torch.Tensor, str]:
    """``count`` normalised images at ``size``² from ``source`` (a list file, folder or
    glob, or ``bundled``), and a digest naming exactly which images they were."""
    if source == BUNDLED:
        from common.synth.forgery import SyntheticConfig, make_sample
        from common.synth.photos import bundled_photos

        rng = np.random.default_rng(0)
        cfg = SyntheticConfig(size=size, authentic_ratio=0.3)
        photos = bundled_photos()
        images = [make_sample(photos, cfg, rng).image for _ in range(count)]
        return normalize_bgr_batch(torch.from_numpy(np.stack(images))), f"{BUNDLED}:{count}"
    records, _ = load_source(source)
    images, names = [], []
    for rec in records:
        if len(images) == count:
            break
        try:
            image = read_image(rec.image)
        except BadInputError as exc:
            log.warning("int8 calibration: skipped %s", exc)
            continue
        images.append(cv2.resize(image, (size, size), interpolation=cv2.INTER_LINEAR))
        names.append(f"{rec.image}:{os.path.getsize(rec.image)}")
    if not images:
        raise UsageError(
            f"no readable calibration images in {source}", f"--int8-calibration {source}"
        )
    digest = hashlib.sha256("\n".join(names).encode()).hexdigest()
    return normalize_bgr_batch(torch.from_numpy(np.stack(images))), digest


def _manipulated_probability(seg: torch.Tensor) -> torch.Tensor:
    """P(manipulated) per pixel: sigmoid for one class, 1 − P(background) for several."""
    return manipulated_probability(probabilities(seg), class_dim=1).unsqueeze(1)


# The accuracy bar's binary agreement counts the pixels fp32 leaves more than this many
# grey levels from the threshold (docs/performance.md). Why: a pixel one or two levels
# from it has no definite side even between exact implementations (the same checkpoint's
# fp32 maps on a GPU and on a CPU differ by up to 1/255, measured on an H200), so how
# many flip there says how many the model leaves near 0.5, not how a path rounds.
CLEAR_MARGIN_255 = 2


def map_cost(reference: nn.Module, int8: nn.Module, images: torch.Tensor) -> dict[str, float]:
    """Probability maps of the int8 path against fp32 on ``images``, one at a time."""
    diffs, agree = [], []
    with torch.inference_mode():
        for image in images:
            ref = _manipulated_probability(reference(image[None])[1])
            got = _manipulated_probability(int8(image[None])[1])
            diffs.append((got - ref).abs().flatten() * 255)
            clear = (ref - 0.5).abs() > CLEAR_MARGIN_255 / 255
            agree.append(((got > 0.5) == (ref > 0.5))[clear].float())
    d, a = torch.cat(diffs), torch.cat(agree)
    return {
        "mean_abs_255": float(d.mean()),
        "max_abs_255": float(d.max()),
        "binary_agreement": float(a.mean()) if a.numel() else 1.0,
    }


def _fast_path(model: nn.Module, winograd_tile: int) -> nn.Module:
    """The path ``--int8`` builds on and replaces (``--fast --amp bf16 --channels-last
    --winograd [TILE]``)."""
    return optimize_for_inference(
        model, torch.bfloat16, True, winograd=True, winograd_tile=winograd_tile
    )


def _fast_path_flags(winograd_tile: int) -> str:
    tile = "" if winograd_tile == WINOGRAD_TILE else f" {winograd_tile}"
    return f"--fast --amp bf16 --channels-last --winograd{tile}"


def speed_gain(fast: nn.Module, int8: nn.Module, image: torch.Tensor, runs: int = 3) -> float:
    """How many times faster the int8 path runs than the fast path it replaces, on this
    CPU (median of ``runs`` interleaved forwards after a warm-up, one image at the run's
    size): int8 kernels pay on some CPUs and not on others, and only a measurement says."""
    times: dict[str, list[float]] = {"fast": [], "int8": []}
    with torch.inference_mode():
        fast(image)
        int8(image)
        for _ in range(runs):
            for name, net in (("fast", fast), ("int8", int8)):
                start = time.perf_counter()
                net(image)
                times[name].append(time.perf_counter() - start)
    return statistics.median(times["fast"]) / statistics.median(times["int8"])


def _read_cache(path: Path, key: dict[str, object]) -> tuple[Qparams, dict] | None:
    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        log.warning("int8 calibration cache %s unreadable (%s): calibrating again", path, exc)
        return None
    if not isinstance(state, dict) or state.get("key") != key:
        return None
    qp = {name: (float(s), int(z)) for name, (s, z) in state["qparams"].items()}
    return qp, dict(state["cost"])


def _write_cache(path: Path, key: dict, qparams: Qparams, cost: dict) -> None:
    save_checkpoint(path, {"key": key, "qparams": qparams, "cost": cost})  # atomic


def int8_model(
    model: nn.Module,
    checkpoint: str | Path,
    source: str,
    count: int,
    size: int,
    cache: str | Path,
    min_gain: float = INT8_MIN_GAIN,
    winograd_tile: int = WINOGRAD_TILE,
) -> nn.Module:
    """The int8 inference path of ``model`` (its head by Winograd F(``winograd_tile``×…)),
    calibrated (or read from ``cache``), with its accuracy cost on the calibration images
    logged; the fast path with the same head instead where int8 ran under ``min_gain``
    times its speed on this CPU (measured, kept in the cache)."""
    cache = Path(cache)
    images, digest = calibration_images(source, count, size)
    key = {
        "version": _CACHE_VERSION,
        "checkpoint": checkpoint_digest(checkpoint),
        "images": digest,
        "size": size,
        "backbone": type(model).__name__,
        "winograd_tile": winograd_tile,  # the path the cost and the speed were measured on
    }
    cached = _read_cache(cache, key)
    if cached is not None:
        qparams, cost = cached
        net = quantize_for_inference(model, qparams=qparams, winograd_tile=winograd_tile)
        log.info("int8: calibration read from %s", cache)
    else:
        log.info("int8: calibrating on %d image(s) from %s at %d²…", len(images), source, size)
        net = quantize_for_inference(model, images, winograd_tile=winograd_tile)
        cost = map_cost(model, net, images)
    # measured once per CPU kind (and ISA cap), kept in the cache; the main process
    # measures and every process follows its choice, so shards never mix paths
    signature = cpu_kernel_signature()
    gains = dict(cost.get("speed_gains") or {})
    fast = None  # built to measure against, and kept should it run instead
    if dist.is_main() and signature not in gains:
        fast = _fast_path(model, winograd_tile)
        gains[signature] = speed_gain(fast, net, images[:1])
        cost = {**cost, "speed_gains": gains}
        try:
            _write_cache(cache, key, net.qparams, cost)
            log.info("int8: calibration saved to %s", cache)
        except OSError as exc:
            log.warning("int8: could not save the calibration to %s (%s)", cache, exc)
    gain = float(dist.gather_objects(gains.get(signature))[0])
    if gain < min_gain:
        log.warning(
            "int8: its kernels do not pay on this CPU (measured %.2f× the fast path's speed, "
            "under %.2f×): running the fast path (%s) instead",
            gain,
            min_gain,
            _fast_path_flags(winograd_tile),
        )
        return fast if fast is not None else _fast_path(model, winograd_tile)
    log.info("int8: %.2f× the fast path's speed on this CPU (measured)", gain)
    log.warning(
        "int8 is opt-in and approximate: on the calibration images its maps differ from "
        "fp32 by %.2f/255 on average (max %.1f/255), binary agreement %.3f %% where fp32 "
        "is clear of 0.5 (bars: ≤ 1/255, ≥ 99.9 %%; see docs/performance.md)",
        cost["mean_abs_255"],
        cost["max_abs_255"],
        100 * cost["binary_agreement"],
    )
    return net
