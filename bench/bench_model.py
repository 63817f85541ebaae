"""Model cost: parameters, FLOPs (counted per operator), forward time and peak memory.

Each configuration runs in its own subprocess so its peak resident memory is its own.
Usage: python bench/bench_model.py [--size 512] [--batches 1 4] [--runs 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

from common.usage import (  # noqa: E402
    Parser,
    UsageError,
    at_least,
    non_negative_int,
    positive_int,
    require_writable_dir,
    run_cli,
)
from models import BACKBONES, get_mvss  # noqa: E402


def _model(backbone: str, device: str, channels_last: bool) -> torch.nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = get_mvss(backbone=backbone).eval().to(device)
    return net.to(memory_format=torch.channels_last) if channels_last else net


def count_flops(backbone: str, size: int) -> float:
    """FLOPs of one forward (2 per multiply-add), counted from the dispatched operators."""
    net = _model(backbone, "cpu", False)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        net(torch.randn(1, 3, size, size))
    return float(counter.get_total_flops())


def time_one(args: argparse.Namespace) -> dict:
    device = args.device
    net = _model(args.backbone, device, args.channels_last)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if args.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]

    def step() -> None:
        with torch.inference_mode(), torch.autocast(device, dtype=dtype, enabled=dtype is not None):
            net(x)
        if device == "cuda":
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.runs):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak_mb = (
        torch.cuda.max_memory_allocated() / 2**20
        if device == "cuda"
        else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    )
    median = statistics.median(times)
    return {
        "device": device,
        "precision": args.precision,
        "channels_last": args.channels_last,
        "batch": args.batch,
        "size": args.size,
        "median_s": median,
        "s_per_image": median / args.batch,
        "runs": args.runs,
        "peak_mem_mb": peak_mb,
    }


def run(argv: list[str]) -> int:
    parser = Parser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="resnet50", choices=BACKBONES)
    parser.add_argument("--size", type=at_least(64), default=512)
    parser.add_argument("--batches", type=positive_int, nargs="+", default=[1, 4])
    parser.add_argument("--runs", type=positive_int, default=5)
    parser.add_argument("--warmup", type=non_negative_int, default=1)
    parser.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "model.json")
    # internal: run one configuration and print its JSON
    parser.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    parser.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    parser.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print(json.dumps(time_one(args)))
        return 0
    require_writable_dir(args.json.parent, "--json")
    if args.json.is_dir():
        raise UsageError("is a folder, not a file", f"--json {args.json}")

    net = _model(args.backbone, "cpu", False)
    params = sum(p.numel() for p in net.parameters())
    del net
    flops = count_flops(args.backbone, args.size)
    configs = [("cpu", p, False) for p in ("fp32", "bf16")] + [("cpu", "bf16", True)]
    if torch.cuda.is_available():
        configs += [("cuda", p, True) for p in ("fp32", "fp16", "bf16")]
    rows = []
    for device, precision, cl in configs:
        for batch in args.batches:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                "--device",
                device,
                "--precision",
                precision,
                "--batch",
                str(batch),
                "--size",
                str(args.size),
                "--runs",
                str(args.runs),
                "--warmup",
                str(args.warmup),
                "--backbone",
                args.backbone,
            ]
            cmd += ["--channels-last"] if cl else []
            out = subprocess.run(cmd, capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(
                f"{device:4s} {precision:4s} cl={int(cl)} batch={batch}: "
                f"{row['median_s']:.3f} s/batch, {row['s_per_image']:.3f} s/image, "
                f"peak {row['peak_mem_mb']:.0f} MB",
                flush=True,
            )
    result = {
        "backbone": args.backbone,
        "params_million": params / 1e6,
        "gflops_per_image": flops / 1e9,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "rows": rows,
    }
    print(f"params {params / 1e6:.1f} M, {flops / 1e9:.1f} GFLOP per {args.size}² image")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(f"written {args.json}")

    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
