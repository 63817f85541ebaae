"""Serve a checkpoint as a local web page and JSON API: drop an image, see where it was
manipulated.

Loads the model once and listens on 127.0.0.1:8000 (--host 0.0.0.0 to reach it from other
machines). On CPU it runs the fast path by default (BatchNorm folded, merged head,
channels_last, Winograd head; bf16 where the CPU computes bf16 natively, else fp32);
CUDA when present. Exit code 2 for a user error (one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from common.cli import add_model_args, load_model
from common.fast import WINOGRAD_TILE
from common.inference import RunOptions
from common.io import MAX_PIXELS
from common.runtime import device_of
from common.serving import Analyser, ModelInfo, Service, create_app
from common.usage import Parser, UsageError, at_least, check_stride, positive_int, run_cli
from models import read_checkpoint_config

DEMO_CHECKPOINT = Path("runs/demo/checkpoints/best.pt")


def native_bf16() -> bool:
    """Whether this CPU computes bf16 natively (AVX-512 BF16 / AMX); elsewhere bf16 is
    emulated and slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = Parser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=positive_int, default=8000)
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument(
        "--precision",
        choices=("auto", "fp32", "bf16", "fp16"),
        default="auto",
        help="auto: bf16 on CPUs with native bf16, fp16 on CUDA, else fp32",
    )
    parser.add_argument("--no-fast", dest="fast", action="store_false", help="plain model")
    parser.add_argument(
        "--max-upload-mb", type=float, default=50.0, help="larger uploads get 413 (50)"
    )
    parser.add_argument(
        "--max-pixels",
        type=at_least(64 * 64),
        default=min(MAX_PIXELS, 100_000_000),
        help="larger images get 413 (100 M pixels)",
    )
    parser.add_argument(
        "--max-queue", type=positive_int, default=4, help="images waiting or running (4)"
    )
    parser.add_argument("--tile", type=at_least(64), default=512, help="full-resolution tiles")
    parser.add_argument("--tile-stride", dest="tile_stride", type=positive_int, default=384)
    args = parser.parse_args(argv)
    if not args.max_upload_mb > 0 or args.max_upload_mb == float("inf"):  # nan fails too
        raise UsageError(f"must be a number > 0, got {args.max_upload_mb}", "--max-upload-mb")
    check_stride(args.tile_stride, args.tile, "--tile-stride", "--tile")
    if not args.model_path:
        if not DEMO_CHECKPOINT.is_file():
            raise UsageError(
                "no checkpoint given",
                "--model_path",
                f"pass one, or run make demo first ({DEMO_CHECKPOINT})",
            )
        args.model_path = str(DEMO_CHECKPOINT)
    return args


def build(args: argparse.Namespace) -> tuple[Service, ModelInfo]:
    device = device_of(args.device, "off")
    precision = args.precision
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else ("bf16" if native_bf16() else "fp32")
    if precision == "fp16" and device.type != "cuda":
        raise UsageError("fp16 is for CUDA", "--precision", "use bf16 or fp32 on CPU")
    config = read_checkpoint_config(args.model_path)
    model_cfg = config.get("model") if isinstance(config.get("model"), dict) else {}
    classifier = config.get("task") == "classification" or "head" in model_cfg
    args.amp = {"fp32": "off", "bf16": "bf16", "fp16": "fp16"}[precision]
    args.channels_last = args.fast
    args.winograd = WINOGRAD_TILE if args.fast else None
    model = load_model(args, device, classifier=classifier)
    nclass = int(model_cfg.get("nclass", 1))
    kind = "classification" if classifier else ("three_class" if nclass == 3 else "localization")
    fast_bf16 = args.fast and precision == "bf16"
    opts = RunOptions(
        device=device,
        amp="off" if fast_bf16 else args.amp,
        channels_last=args.fast,
        tile=args.tile,
        tile_stride=args.tile_stride,
    )
    info = ModelInfo(
        checkpoint=str(args.model_path),
        backbone=str(args.backbone or model_cfg.get("backbone", "resnet50")),
        nclass=nclass,
        kind=kind,
        precision=precision,
        device=str(device),
        fast=bool(args.fast),
    )
    return Service(Analyser(model, info, opts), max_queue=args.max_queue), info


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    service, info = build(args)
    import uvicorn

    app = create_app(service, args.max_upload_mb, args.max_pixels)
    where = f"http://{args.host}:{args.port}/"
    print(f"serving {info.checkpoint} ({info.kind}, {info.precision}) at {where}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
