"""Model forward at 512×512: plain fp32 eager vs the fast paths, side by side.

Runs on the GPU when there is one (``--device auto``), else on the CPU; on CUDA the fp16
paths are added and the int8 path (x86 CPUs only) is left out. Prints seconds per batch
(median of --runs after warm-up, interleaved), the speed-up over the first path (the
release's own code with --release-code, else fp32 eager), and the accuracy of each
path's probability maps against our fp32 eager on synthetic forgeries (mean / max
absolute difference in 1/255 units, binary agreement at 0.5). Also the floor: FLOPs per
image ÷ this machine's measured bf16 matrix-multiply rate.
Writes bench/results/inference.json.
"""

from __future__ import annotations

import copy
import sys
import time

import numpy as np
import torch
from torch import nn

from bench.shared import (
    bench_device,
    calibrated_model,
    count_flops,
    interleaved_medians,
    map_accuracy,
    synchronize,
    synthetic_images,
    write_result,
)
from common.accel.fast_path import WINOGRAD_MIN_CHANNELS, optimize_for_inference
from common.core.memory import ENV, keep_freed_memory
from common.core.user_errors import Parser, at_least, non_negative_int, positive_int, run_cli
from common.data.transforms import normalize_bgr_batch
from models import BACKBONES


def matmul_rate(dtype: torch.dtype, device: torch.device, n: int = 2048, reps: int = 5) -> float:
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    synchronize(device)
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    synchronize(device)
    return 2 * n**3 * reps / (time.perf_counter() - start)


class _Fp32Block(nn.Module):
    """An attention block run wholly in fp32 inside a bf16 model (the fast path before its
    attention went mixed-precision): for the ablation only."""

    def __init__(self, block: nn.Module) -> None:
        super().__init__()
        self.block = block.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return self.block(x.float()).to(x.dtype)


def fp32_attention(fast_net: nn.Module, plain: nn.Module) -> nn.Module:
    """``fast_net`` with PAM and CAM back in fp32 (copies of the plain model's blocks)."""
    head = fast_net.net.head
    head.pam = _Fp32Block(copy.deepcopy(plain.head.pam)).to(plain.head.pam.alpha.device)
    head.cam = _Fp32Block(copy.deepcopy(plain.head.cam)).to(plain.head.pam.alpha.device)
    return fast_net


def run(argv: list[str]) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="auto", help="auto (the GPU when present), cpu, cuda")
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
    p.add_argument(
        "--int8",
        action="store_true",
        help="also the int8 layers, always (the commands' --int8 first measures whether they "
        "pay on this CPU and runs the fast path where they do not)",
    )
    p.add_argument(
        "--winograd4",
        action="store_true",
        help="also the head by Winograd F(4×4, 3×3) (with --int8: the int8 path with it too)",
    )
    p.add_argument(
        "--ablations",
        action="store_true",
        help="also the fastest path with one of its parts undone: edge gates unfused, "
        "attention wholly in fp32, convolution weights not packed for their CPU kernel",
    )
    p.add_argument(
        "--release-code",
        metavar="DIR",
        help="a checkout of the official release (dong03/MVSS-Net): also time its own "
        "model code with the same weights (fp32, and bf16 autocast + channels_last)",
    )
    args = p.parse_args(argv)
    device = bench_device(args.device)
    cuda = device.type == "cuda"
    # As the command-line tools run (every path here shares the process, the release's too).
    kept = device.type == "cpu" and keep_freed_memory()
    print(f"freed memory kept for reuse: {'yes' if kept else 'no'} ({ENV})", flush=True)

    def make():
        net = calibrated_model(args.backbone, args.size, 0, args.calibrate, args.weights)
        return net.to(device)

    def autocast_run(net, cl, dtype=torch.bfloat16):
        def forward(x):
            if cl:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=dtype):
                return net(x)

        return forward

    def fast(dtype=torch.bfloat16, channels_last=True, **kwargs):
        return optimize_for_inference(base, dtype, channels_last, **kwargs).to(device)

    base = make()
    paths = {
        "fp32 eager": lambda x: base(x),
        "bf16 autocast": None,
        "bf16 autocast + channels_last": None,
        "fast fp32 (folded BN, merged head)": fast(torch.float32, False),
        "fast bf16 + channels_last": fast(),
        "fast bf16 + channels_last + winograd": fast(
            winograd=True, winograd_min_channels=args.winograd_min_channels
        ),
    }
    if args.winograd4:
        paths["fast bf16 + channels_last + winograd F(4x4)"] = fast(winograd=True, winograd_tile=4)
    if args.ablations:
        paths["fast bf16 + winograd, edge gates unfused"] = fast(winograd=True, fuse_edge=False)
        paths["fast bf16 + winograd, attention in fp32"] = fp32_attention(fast(winograd=True), base)
        paths["fast bf16 + winograd, weights unpacked"] = fast(winograd=True, pack=False)
    if cuda:  # fp16 tensor cores: the GPU's other half-precision path
        paths["fp16 autocast + channels_last"] = None
        paths["fast fp16 + channels_last + winograd"] = fast(torch.float16, winograd=True)
    if args.int8 and cuda:
        print("int8: left out (the int8 path runs on x86 CPUs only)", flush=True)
    elif args.int8:
        from common.accel.int8 import quantize_for_inference

        calibration = normalize_bgr_batch(torch.from_numpy(synthetic_images(8, args.size, seed=21)))
        start = time.perf_counter()
        int8 = quantize_for_inference(base, calibration)
        paths["int8 forced + fast bf16 + winograd"] = int8
        print(f"int8 calibration: {time.perf_counter() - start:.1f} s", flush=True)
        if args.winograd4:  # the same scales, the F(4×4) head
            paths["int8 forced + fast bf16 + winograd F(4x4)"] = quantize_for_inference(
                base, qparams=int8.qparams, winograd_tile=4
            )
    if args.release_code:
        from bench.release_model import release_model

        release = release_model(args.release_code, base).to(device)
        release_cl = release_model(args.release_code, base).to(device)
        release_cl = release_cl.to(memory_format=torch.channels_last)
        paths = {
            "release fp32 (its own code)": lambda x: release(x),
            "release bf16 autocast + channels_last": autocast_run(release_cl, True),
            **paths,
        }
    base_cl = make().to(memory_format=torch.channels_last)
    base_cl.load_state_dict(base.state_dict())

    paths["bf16 autocast"] = autocast_run(base, False)
    paths["bf16 autocast + channels_last"] = autocast_run(base_cl, True)
    if cuda:
        paths["fp16 autocast + channels_last"] = autocast_run(base_cl, True, torch.float16)
    build_s = {}
    if args.compile:
        compiled = {
            "fast bf16 + channels_last + compile": fast(compile_model=True),
            "fast bf16 + channels_last + winograd + compile": fast(
                compile_model=True, winograd=True
            ),
        }
        warm = normalize_bgr_batch(torch.from_numpy(synthetic_images(1, args.size, seed=5)))
        warm = warm.to(device)
        for name, net in compiled.items():  # the first call builds the graph: timed apart
            start = time.perf_counter()
            with torch.inference_mode():
                net(warm)
            synchronize(device)
            build_s[name] = time.perf_counter() - start
            print(f"{name}: first call (build) {build_s[name]:.1f} s", flush=True)
        paths.update(compiled)

    # accuracy on real-looking inputs
    images = synthetic_images(args.accuracy_images, args.size, seed=11)
    x_all = normalize_bgr_batch(torch.from_numpy(images)).to(device)
    accuracy = map_accuracy(paths, "fp32 eager", x_all)
    reference = next(iter(paths))  # the release's own code when given, else ours in fp32
    rows = []
    for batch in args.batches:
        x = x_all[:1].repeat(batch, 1, 1, 1) if batch > len(x_all) else x_all[:batch]
        fns = {name: (lambda fn=fn, x=x: fn(x)) for name, fn in paths.items()}
        with torch.inference_mode():
            medians = interleaved_medians(fns, runs=args.runs, device=device)
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
    flops = count_flops(base, x_all[:1])["total"]
    rate_bf16 = matmul_rate(torch.bfloat16, device)
    rate_fp32 = matmul_rate(torch.float32, device)
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
            "device": str(device),
            "device_name": torch.cuda.get_device_name(device) if cuda else "cpu",
            "threads": torch.get_num_threads(),
            "images": args.accuracy_images,
            "compile_build_s": build_s,
            "freed_memory_kept": kept,
        },
    )

    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    sys.exit(main())
