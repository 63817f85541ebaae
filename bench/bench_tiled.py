"""Full-resolution tiled inference: peak resident memory and time against tile count.

Each image size runs in its own subprocess so its peak RSS is its own.
Writes bench/results/tiled.json.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import cv2
import torch

from bench.common_bench import ROOT, calibrated_model, int_pair, synthetic_images, write_result
from common.fast import optimize_for_inference
from common.inference import RunOptions, predict_tiled, tile_windows
from common.usage import Parser, at_least, check_stride, run_cli


def one(width: int, height: int, fast: bool, tile: int, stride: int) -> dict:
    base = calibrated_model()
    model = optimize_for_inference(base, torch.bfloat16, True) if fast else base
    image = cv2.resize(synthetic_images(1, 1024, seed=3)[0], (width, height))
    opts = RunOptions(tile=tile, tile_stride=stride, tile_batch=4)
    start = time.perf_counter()
    prob = predict_tiled(model, image, opts)
    seconds = time.perf_counter() - start
    tiles = len(tile_windows(height, width, tile, stride))
    return {
        "width": width,
        "height": height,
        "tiles": tiles,
        "seconds": seconds,
        "s_per_tile": seconds / tiles,
        "map_shape": list(prob.shape),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def run(argv: list[str]) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", type=int_pair, default=["2000x1500", "4000x3000"])
    p.add_argument("--tile", type=at_least(64), default=512)
    p.add_argument("--stride", type=at_least(1), default=384)
    p.add_argument("--fast", action="store_true")
    p.add_argument("--one", type=int_pair, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    check_stride(args.stride, args.tile, "--stride", "--tile")
    if args.one:
        w, h = (int(v) for v in args.one.split("x"))
        print(json.dumps(one(w, h, args.fast, args.tile, args.stride)))
        return 0
    rows = []
    for spec in args.sizes:
        cmd = [
            sys.executable,
            "-m",
            "bench.bench_tiled",
            "--one",
            spec,
            "--tile",
            str(args.tile),
            "--stride",
            str(args.stride),
        ] + (["--fast"] if args.fast else [])
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{spec}: {row['tiles']} tiles, {row['seconds']:.1f} s "
            f"({row['s_per_tile']:.3f} s/tile), "
            f"peak RSS {row['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    write_result("tiled", {"rows": rows, "fast": args.fast})

    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
