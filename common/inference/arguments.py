"""The options that say which checkpoint runs and how, shared by every command (the
inference scripts, the benchmark and the server), and their translation into the typed
settings of :mod:`common.inference.settings`. Option names follow the release's, with
dashed spellings as equals."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch
from torch import nn

from common.accel.fast_path import WINOGRAD_TILE
from common.accel.int8_cache import BUNDLED, DEFAULT_CALIBRATION_IMAGES, INT8_MIN_GAIN
from common.accel.winograd import TILE_SIZES
from common.core.memory import keep_freed_memory
from common.core.release import RELEASE_SIZE, TILE_STRIDE
from common.core.runtime import AMP_MODES
from common.core.user_errors import (
    at_least,
    check_stride,
    non_negative_int,
    non_negative_number,
    positive_int,
)
from common.inference import settings
from common.inference.settings import DEFAULT_BACKBONE, ModelSpec
from common.inference.single_image import RunOptions, tile_blend
from models import BACKBONES

INFERENCE_AMP_MODES = (*AMP_MODES, "auto")


def parse_resize(text: str) -> int | None:
    """``512`` → 512; ``none`` → None (full resolution, tiled)."""
    if text.lower() in ("none", "full", "0"):
        return None
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from exc
    if value < 64:
        raise argparse.ArgumentTypeError(f"size must be at least 64 (or 'none'), got {value}")
    return value


def add_model_args(parser: argparse.ArgumentParser, nclass: int = 1) -> None:
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model_path",
        "--model-path",
        dest="model_path",
        help="checkpoint: official .pt/.pth, ours, or .safetensors",
    )
    g.add_argument(
        "--backbone",
        choices=BACKBONES,
        default=None,
        help=f"default: from the checkpoint's config, else {DEFAULT_BACKBONE}",
    )
    g.add_argument("--nclass", type=int, default=nclass, help=argparse.SUPPRESS)


def add_run_args(
    parser: argparse.ArgumentParser,
    tile: int = RELEASE_SIZE,
    stride: int = TILE_STRIDE,
    batches: bool = True,
    amp: str = "off",
    fast: bool = False,
) -> None:
    """How a checkpoint runs: the same options, names and meanings on every command.
    The server passes ``batches=False`` (one image per request), ``amp="auto"`` and
    ``fast=True`` (its defaults; ``--no-fast`` for the plain model)."""
    g = parser.add_argument_group("running")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    g.add_argument(
        "--amp",
        choices=INFERENCE_AMP_MODES,
        default=amp,
        help="mixed precision; auto: fp16 on CUDA, bf16 on CPUs that compute it natively, "
        f"else off; off on a GPU is full fp32, TF32 off (default {amp})",
    )
    g.add_argument(
        "--channels-last",
        dest="channels_last",
        action="store_true",
        help="channels_last memory format (faster with --amp bf16 on CPU)",
    )
    fast_help = (
        "inference fast path: BatchNorm folded, head convolutions merged, "
        "bf16 weights with --amp bf16 (see docs/performance.md)"
    )
    if fast:
        g.add_argument(
            "--fast",
            action=argparse.BooleanOptionalAction,
            default=True,
            help=fast_help + "; on by default here, with channels_last and the Winograd head",
        )
    else:
        g.add_argument("--fast", action="store_true", help=fast_help)
    g.add_argument(
        "--winograd",
        nargs="?",
        type=int,
        choices=TILE_SIZES,
        const=WINOGRAD_TILE,
        default=None,
        metavar="TILE",
        help=f"with --fast: the head's wide 3×3 convolutions by Winograd F(TILE×TILE, 3×3); "
        f"TILE {WINOGRAD_TILE} (the default, 2.25× fewer multiply-adds there) keeps maps "
        "within bf16 rounding, 4 (4× fewer) is faster with larger rounding "
        "(see docs/performance.md)",
    )
    g.add_argument(
        "--int8",
        action="store_true",
        help="opt-in, x86 CPU: the fast path with the RGB backbone's last two stages in int8 "
        "(implies --fast --amp bf16 --channels-last --winograd; --winograd 4 gives it the "
        "F(4×4) head); approximate, its cost is printed (see docs/performance.md)",
    )
    g.add_argument(
        "--int8-calibration",
        dest="int8_calibration",
        default=BUNDLED,
        metavar="SOURCE",
        help="calibration images for --int8: a list file, folder or glob, or 'bundled' "
        "(synthetic forgeries of the bundled photographs; the default)",
    )
    g.add_argument(
        "--int8-images",
        dest="int8_images",
        type=positive_int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help=f"how many calibration images (default {DEFAULT_CALIBRATION_IMAGES})",
    )
    g.add_argument(
        "--int8-cache",
        dest="int8_cache",
        default=None,
        metavar="FILE",
        help="calibration cache (default: <save_dir>/int8_calibration.pt); reused while "
        "the checkpoint, the images and the size match",
    )
    g.add_argument(
        "--int8-min-gain",
        dest="int8_min_gain",
        type=non_negative_number,
        default=INT8_MIN_GAIN,
        metavar="X",
        help=f"--int8 runs only where it measured at least X times the fast path's speed on "
        f"this CPU (default {INT8_MIN_GAIN}; measured once per CPU kind and kept in the "
        "cache); elsewhere it says so and runs the fast path. 0: always int8",
    )
    if batches:
        g.add_argument(
            "--batch-size", "--batch_size", dest="batch_size", type=positive_int, default=4
        )
        g.add_argument(
            "--workers",
            type=non_negative_int,
            default=2,
            help="decoding worker processes (default 2)",
        )
    g.add_argument(
        "--tile",
        type=at_least(64),
        default=tile,
        help=f"tile size for --resize none (default {tile})",
    )
    g.add_argument(
        "--tile-stride",
        dest="tile_stride",
        type=positive_int,
        default=stride,
        help=f"tile stride (default {stride})",
    )


def model_spec(args: argparse.Namespace) -> ModelSpec:
    """The settings the options ask for, resolved for ``--device`` (``--int8``'s parts
    switched on, ``auto`` precision picked, impossible combinations refused)."""
    check_stride(args.tile_stride, args.tile, "--tile-stride", "--tile")
    resize = getattr(args, "resize", None)
    spec = ModelSpec(
        amp=args.amp,
        fast=bool(args.fast),
        winograd=args.winograd,
        channels_last=bool(args.channels_last),
        int8=bool(args.int8),
        int8_calibration=args.int8_calibration,
        int8_images=args.int8_images,
        int8_cache=Path(args.int8_cache) if args.int8_cache else None,
        int8_min_gain=args.int8_min_gain,
        int8_size=resize or args.tile,
        backbone=args.backbone,
        head=getattr(args, "head", None),
    )
    return spec.resolved(args.device)


def run_options(args: argparse.Namespace, spec: ModelSpec, nclass: int | None = None) -> RunOptions:
    """How inference calls the model ``spec`` loads, from the shared options; tiles are
    blended as the model's kind of map asks (:func:`tile_blend`): ``nclass`` where the
    script knows it (the three-class script: the seed's checkpoints describe nothing),
    else as the checkpoint says."""
    opts = settings.run_options(
        spec,
        args.device,
        tile=args.tile,
        tile_stride=args.tile_stride,
        tile_batch=getattr(args, "batch_size", 4),
        blend=tile_blend(nclass or settings.describe_checkpoint(args.model_path).nclass),
    )
    if spec.amp == "off" and opts.device.type == "cuda" and os.environ.get("RANK", "0") == "0":
        # load_model turns TF32 off (common/core/runtime.py: full_fp32_on_cuda)
        print("fp32 on the GPU: TF32 off, so the maps are fp32's (--amp auto is faster)")
    return opts


def load_model(
    args: argparse.Namespace,
    spec: ModelSpec,
    device: torch.device,
    task: str | None = None,
) -> nn.Module:
    """:func:`common.inference.settings.load_model` for ``--model_path``, the int8
    cache defaulting to the run's ``--save_dir``. On the CPU, the command's process keeps
    freed memory for the next forward (``common/core/memory.py``)."""
    if device.type == "cpu":
        keep_freed_memory()
    cache_dir = getattr(args, "save_dir", ".")
    return settings.load_model(args.model_path, device, spec, task, cache_dir)
