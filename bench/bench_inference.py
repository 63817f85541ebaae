"""Model forward at 512×512 on CPU: plain fp32 eager vs the fast paths, side by side.

Prints seconds per batch (median of --runs after warm-up, interleaved), the speed-up over
fp32 eager, and the accuracy of each path's probability maps against fp32 on synthetic
forgeries (mean / max absolute difference in 1/255 units, binary agreement at 0.5). Also
the floor: FLOPs per image ÷ this machine's measured bf16 matrix-multiply rate.
Writes bench/results/inference.json.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.common_bench import (
    calibrated_model,
    interleaved_medians,
    map_accuracy,
    synthetic_images,
    write_result,
)
from common.fast import WINOGRAD_MIN_CHANNELS, optimize_for_inference
from common.transforms import normalize_bgr_batch
from common.usage import Parser, at_least, non_negative_int, positive_int, run_cli
from models import BACKBONES


def matmul_rate(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start)


def run(argv: list[str]) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=at_least(64), default=512)
    p.add_argument("--batches", type=positive_int, nargs="+", default=[1, 8])
    p.add_argument("--runs", type=positive_int, default=5)
    p.add_argument("--compile", action="store_true", help="also time torch.compile (slow to build)")
    p.add_argument("--accuracy-images", type=positive_int, default=8)
    p.add_argument("--backbone", default="resnet50", choices=BACKBONES)
    p.add_argument("--weights", help="checkpoint to time and compare (default: random init)")
    p.add_argument(
        "--winograd-min-channels",
        type=non_negative_int,
        default=WINOGRAD_MIN_CHANNELS,
        help="see fast.py",
    )
    p.add_argument("--calibrate", action="store_true", help="BatchNorm statistics from photos")
    p.add_argument("--int8", action="store_true", help="also the opt-in int8 path")
    p.add_argument("--winograd4", action="store_true", help="also the head by Winograd F(4×4, 3×3)")
    p.add_argument(
        "--release-code",
        metavar="DIR",
        help="a checkout of the official release (dong03/MVSS-Net): also time its own "
        "model code with the same weights (fp32, and bf16 autocast + channels_last)",
    )
    args = p.parse_args(argv)

    def make():
        return calibrated_model(args.backbone, args.size, 0, args.calibrate, args.weights)

    def autocast_run(net, cl):
        def forward(x):
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return net(x)

        return forward

    base = make()
    paths = {
        "fp32 eager": lambda x: base(x),
        "bf16 autocast": None,
        "bf16 autocast + channels_last": None,
        "fast fp32 (folded BN, merged head)": optimize_for_inference(base),
        "fast bf16 + channels_last": optimize_for_inference(base, torch.bfloat16, True),
        "fast bf16 + channels_last + winograd": optimize_for_inference(
            base,
            torch.bfloat16,
            True,
            winograd=True,
            winograd_min_channels=args.winograd_min_channels,
        ),
    }
    if args.winograd4:
        paths["fast bf16 + channels_last + winograd F(4x4)"] = optimize_for_inference(
            base, torch.bfloat16, True, winograd=True, winograd_tile=4
        )
    if args.int8:
        from common.int8 import quantize_for_inference

        calibration = normalize_bgr_batch(torch.from_numpy(synthetic_images(8, args.size, seed=21)))
        start = time.perf_counter()
        paths["int8 backbones + fast bf16 + winograd"] = quantize_for_inference(base, calibration)
        print(f"int8 calibration: {time.perf_counter() - start:.1f} s", flush=True)
    if args.release_code:
        from bench.release_model import release_model

        release = release_model(args.release_code, base)
        release_cl = release_model(args.release_code, base).to(memory_format=torch.channels_last)
        paths = {
            "release fp32 (its own code)": lambda x: release(x),
            "release bf16 autocast + channels_last": autocast_run(release_cl, True),
            **paths,
        }
    base_cl = make().to(memory_format=torch.channels_last)
    base_cl.load_state_dict(base.state_dict())

    paths["bf16 autocast"] = autocast_run(base, False)
    paths["bf16 autocast + channels_last"] = autocast_run(base_cl, True)
    build_s = {}
    if args.compile:
        compiled = {
            "fast bf16 + channels_last + compile": optimize_for_inference(
                base, torch.bfloat16, True, compile_model=True
            ),
            "fast bf16 + channels_last + winograd + compile": optimize_for_inference(
                base, torch.bfloat16, True, compile_model=True, winograd=True
            ),
        }
        warm = normalize_bgr_batch(torch.from_numpy(synthetic_images(1, args.size, seed=5)))
        for name, net in compiled.items():  # the first call builds the graph: timed apart
            start = time.perf_counter()
            with torch.inference_mode():
                net(warm)
            build_s[name] = time.perf_counter() - start
            print(f"{name}: first call (build) {build_s[name]:.1f} s", flush=True)
        paths.update(compiled)

    # accuracy on real-looking inputs
    images = synthetic_images(args.accuracy_images, args.size, seed=11)
    x_all = normalize_bgr_batch(torch.from_numpy(images))
    accuracy = map_accuracy(paths, "fp32 eager", x_all)
    reference = next(iter(paths))  # the release's own code when given, else ours in fp32
    rows = []
    for batch in args.batches:
        x = x_all[:1].repeat(batch, 1, 1, 1) if batch > len(x_all) else x_all[:batch]
        fns = {name: (lambda fn=fn, x=x: fn(x)) for name, fn in paths.items()}
        with torch.inference_mode():
            medians = interleaved_medians(fns, runs=args.runs)
        for name, t in medians.items():
            rows.append(
                {
                    "path": name,
                    "batch": batch,
                    "s_per_batch": t,
                    "s_per_image": t / batch,
                    "speedup": medians[reference] / t,
                    **accuracy[name],
                }
            )
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        base(x_all[:1])
    flops = counter.get_total_flops()
    rate_bf16, rate_fp32 = matmul_rate(torch.bfloat16), matmul_rate(torch.float32)
    floor = {
        "gflop_per_image": flops / 1e9,
        "bf16_gflops": rate_bf16 / 1e9,
        "fp32_gflops": rate_fp32 / 1e9,
        "bf16_floor_s": flops / rate_bf16,
        "fp32_floor_s": flops / rate_fp32,
    }
    print(
        f"{'path':48s} {'batch':>5s} {'s/img':>7s} {'speed-up':>8s} {'mean/255':>8s} "
        f"{'max/255':>8s} {'agree %':>8s}"
    )
    for r in rows:
        print(
            f"{r['path']:48s} {r['batch']:5d} {r['s_per_image']:7.3f} {r['speedup']:7.2f}x "
            f"{r['mean_abs_255']:8.3f} {r['max_abs_255']:8.2f} {100 * r['binary_agreement']:8.3f}"
        )
    print(
        f"floor: {floor['gflop_per_image']:.1f} GFLOP/image; matmul {floor['bf16_gflops']:.0f} "
        f"GFLOP/s bf16, {floor['fp32_gflops']:.0f} fp32 → {floor['bf16_floor_s']:.3f} s bf16, "
        f"{floor['fp32_floor_s']:.3f} s fp32"
    )
    write_result(
        "inference",
        {
            "rows": rows,
            "floor": floor,
            "threads": torch.get_num_threads(),
            "images": args.accuracy_images,
            "compile_build_s": build_s,
        },
    )

    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
