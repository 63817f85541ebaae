"""Serve a checkpoint as a local web page and JSON API: drop an image, see where it was
manipulated.

Loads the model once and listens on 127.0.0.1:8000 (--host 0.0.0.0 to reach it from other
machines). The model options are the inference scripts' (--amp, --fast, --int8, --device,
--tile, --tile-stride); the defaults differ: the fast path (BatchNorm folded, merged head,
channels_last, Winograd head; --no-fast for the plain model) and --amp auto (bf16 where
the CPU computes bf16 natively, else fp32; fp16 on CUDA). Exit code 2 for a user error
(one line on stderr).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.accel.fast_path import WINOGRAD_TILE
from common.app.serving import Analyser, ModelInfo, Service, create_app
from common.core.distributed import refuse_several_processes
from common.core.user_errors import Parser, UsageError, at_least, positive_int, run_cli
from common.data.decode import MAX_PIXELS
from common.evaluation.arguments import add_threshold_args, resolve_thresholds
from common.inference.arguments import (
    add_model_args,
    add_run_args,
    load_model,
    model_spec,
    run_options,
)
from common.inference.crops import DEFAULT_CROP
from common.inference.settings import describe_checkpoint

DEMO_CHECKPOINT = Path("runs/demo/checkpoints/best.pt")
# The names of --amp's modes as the page and the API report them.
PRECISION_NAMES = {"off": "fp32", "bf16": "bf16", "fp16": "fp16"}


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = Parser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    add_run_args(parser, batches=False, amp="auto", fast=True)
    add_threshold_args(
        parser,
        "pixel threshold in (0, 1) the page starts at and the API applies by default",
        "image threshold in (0, 1) of the verdict",
    )
    parser.add_argument(  # the earlier spelling of --amp, kept working
        "--precision", choices=("auto", "fp32", "bf16", "fp16"), help=argparse.SUPPRESS
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (127.0.0.1)")
    parser.add_argument("--port", type=positive_int, default=8000)
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
    args = parser.parse_args(argv)
    if args.precision:
        args.amp = {"fp32": "off"}.get(args.precision, args.precision)
    if args.fast:  # the server's fast path: channels_last and the Winograd head too
        args.channels_last = True
        args.winograd = args.winograd or WINOGRAD_TILE
    if not args.max_upload_mb > 0 or args.max_upload_mb == float("inf"):  # nan fails too
        raise UsageError(f"must be a number > 0, got {args.max_upload_mb}", "--max-upload-mb")
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
    spec = model_spec(args)
    opts = run_options(args, spec)
    if spec.amp == "fp16" and opts.device.type != "cuda":
        raise UsageError("fp16 is for CUDA", "--amp", "use bf16 or off on CPU")
    description = describe_checkpoint(args.model_path)
    thresholds = resolve_thresholds(args, args.model_path, description.task)
    model = load_model(args, spec, opts.device, description.task)
    info = ModelInfo(
        checkpoint=str(args.model_path),
        backbone=spec.backbone or description.backbone,
        nclass=description.nclass,
        kind=description.task,
        precision=PRECISION_NAMES[spec.amp],
        device=str(opts.device),
        fast=spec.fast,
        thresholds=thresholds,
        desensitised=description.desensitised,
        crop=description.crop or DEFAULT_CROP,
        resized=description.resized,
    )
    return Service(Analyser(model, info, opts), max_queue=args.max_queue), info


def run(argv: list[str]) -> int:
    refuse_several_processes("serve.py", "run it without torchrun: one process serves every client")
    args = parse_args(argv)
    service, info = build(args)
    import uvicorn

    app = create_app(service, args.max_upload_mb, args.max_pixels)
    where = f"http://{args.host}:{args.port}/"
    print(f"serving {info.checkpoint} ({info.kind}, {info.precision}) at {where}", flush=True)
    print(info.thresholds.line(info.kind), flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
