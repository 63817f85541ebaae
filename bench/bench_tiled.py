"""Full-resolution tiled inference: peak resident memory and time against tile count.

Each image size runs in its own subprocess so its peak RSS is its own. ``--path`` picks
the same inference paths as the profiler (``fast-winograd``, the CLI's ``--fast --amp bf16
--channels-last --winograd``, by default; ``fp32`` for the plain model); the GPU when
there is one (``--device auto``).
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

from bench.common_bench import (
    ROOT,
    bench_device,
    calibrated_model,
    int_pair,
    synchronize,
    synthetic_images,
    write_result,
)
from common.fast import PATH_NAMES, inference_path
from common.inference import RunOptions, predict_tiled, tile_windows
from common.transforms import normalize_bgr_batch
from common.usage import Parser, at_least, check_stride, run_cli


def one(width: int, height: int, path: str, tile: int, stride: int, device_name: str) -> dict:
    device = bench_device(device_name)
    base = calibrated_model()
    if path == "fp32":
        model = base.to(device)
    else:
        calibration = None
        if path == "int8":  # scales from forgeries at the tile size, as --int8 calibrates
            calibration = normalize_bgr_batch(torch.from_numpy(synthetic_images(4, tile, 21)))
        model = inference_path(base, path, calibration).to(device)
    image = cv2.resize(synthetic_images(1, 1024, seed=3)[0], (width, height))
    opts = RunOptions(device=device, tile=tile, tile_stride=stride, tile_batch=4)
    start = time.perf_counter()
    prob = predict_tiled(model, image, opts)
    synchronize(device)
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
    p.add_argument("--path", choices=("fp32", *PATH_NAMES), default="fast-winograd")
    p.add_argument("--device", default="auto", help="auto (the GPU when present), cpu, cuda")
    p.add_argument("--one", type=int_pair, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    check_stride(args.stride, args.tile, "--stride", "--tile")
    if args.one:
        w, h = (int(v) for v in args.one.split("x"))
        print(json.dumps(one(w, h, args.path, args.tile, args.stride, args.device)))
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
            "--path",
            args.path,
            "--device",
            args.device,
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=True, cwd=ROOT)
        row = json.loads(res.stdout.strip().splitlines()[-1])
        rows.append(row)
        print(
            f"{spec}: {row['tiles']} tiles, {row['seconds']:.1f} s "
            f"({row['s_per_tile']:.3f} s/tile), "
            f"peak RSS {row['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    write_result(f"tiled_{args.path}", {"rows": rows, "path": args.path})

    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
