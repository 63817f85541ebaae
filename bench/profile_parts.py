"""Where one forward of an inference path spends its time, part by part, against FLOPs.

Why: before making a path faster, see which parts are compute-bound (their share of time
follows their share of FLOPs) and which are memory-bound (far more time than FLOPs). One
forward at 512×512, batch 1, under ``torch.profiler``; each part of the network is a
``record_function`` range (hooks on its modules, wrappers around the functions between
them), so the table sums to the whole forward. FLOPs are counted per part by
``bench.shared.count_flops`` (``FlopCounterMode``) on the same path (a Winograd layer
counts what it multiplies; an int8 layer as the bf16 layer it replaces).
On CUDA (``--device auto`` on a GPU machine) the ranges synchronise the GPU at each
part's edges, so each range's time is that part's GPU time (the sums cost a little
overlap). Writes bench/results/profile_<path>.json.
Usage: python -m bench.profile_parts [--path fast-winograd] [--weights CK] [--device auto]
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Callable, Iterator

import torch
from torch import nn
from torch.profiler import ProfilerActivity, profile, record_function

import models.mvssnet as mvssnet
from bench.shared import (
    bench_device,
    calibrated_model,
    count_flops,
    synchronize,
    synthetic_images,
    write_result,
)
from common.accel.packed_conv import unpack_convolutions
from common.accel.paths import PATH_NAMES, inference_path
from common.core.memory import keep_freed_memory
from common.core.user_errors import Parser, UsageError, at_least, positive_int, run_cli
from common.data.transforms import normalize_bgr_batch
from models import BACKBONES

# part label → attribute paths (relative to the MVSS-Net) of the modules it contains.
PART_MODULES: dict[str, tuple[str, ...]] = {
    "RGB backbone": ("model",),
    "noise backbone": ("noise_extractor",),
    "Bayar stem (grey + 5×5 conv)": ("constrain_conv",),
    "head 3×3 convolutions": (
        "head.entry",
        "head.conv_p1",
        "head.conv_c1",
        "head.conv_p2",
        "head.conv_c2",
    ),
    "attention (PAM + CAM)": ("head.pam", "head.cam"),
    "output 1×1 conv": ("head.out",),
}
# Parts that are code between modules, timed by wrapping the function that runs them.
EDGE = "edge branch (Sobel gates + ERBs)"
UPSAMPLING = "seg upsampling (×16 bilinear)"
BAYAR = "Bayar stem (grey + 5×5 conv)"


def mvss_of(net: nn.Module) -> nn.Module:
    """The MVSS-Net inside a fast-path wrapper (or the net itself)."""
    while not hasattr(net, "forward_features") and hasattr(net, "net"):
        net = net.net
    return net


def _module(root: nn.Module, path: str) -> nn.Module | None:
    try:
        return root.get_submodule(path)
    except AttributeError:
        return None


def _edge_modules(root: nn.Module) -> list[nn.Module]:
    return [m for name, m in root.named_children() if name.startswith(("erb_", "sobel_"))]


@contextlib.contextmanager
def part_ranges(net: nn.Module, device: torch.device | None = None) -> Iterator[None]:
    """While active, every part of ``net``'s forward runs inside a named range (with the
    GPU synchronised at its edges on CUDA)."""
    root = mvss_of(net)
    handles = []
    stack: list[contextlib.AbstractContextManager] = []

    def enter(label: str) -> Callable:
        def hook(*_: object) -> None:
            synchronize(device)
            rf = record_function(label)
            rf.__enter__()
            stack.append(rf)

        return hook

    def leave(*_: object) -> None:
        synchronize(device)
        stack.pop().__exit__(None, None, None)

    for label, paths in PART_MODULES.items():
        for path in paths:
            module = _module(root, path)
            if module is not None:
                handles.append(module.register_forward_pre_hook(enter(label)))
                handles.append(module.register_forward_hook(leave))

    def wrapped(label: str, fn: Callable) -> Callable:
        def run(*args: object, **kwargs: object) -> object:
            synchronize(device)
            with record_function(label):
                out = fn(*args, **kwargs)
                synchronize(device)
                return out

        return run

    functional = types.SimpleNamespace(**{k: getattr(mvssnet.F, k) for k in dir(mvssnet.F)})
    functional.interpolate = wrapped(UPSAMPLING, mvssnet.F.interpolate)
    saved = (mvssnet.edge_forward, mvssnet.rgb_to_gray, mvssnet.F)
    mvssnet.edge_forward = wrapped(EDGE, mvssnet.edge_forward)
    mvssnet.rgb_to_gray = wrapped(BAYAR, mvssnet.rgb_to_gray)
    mvssnet.F = functional
    try:
        yield
    finally:
        mvssnet.edge_forward, mvssnet.rgb_to_gray, mvssnet.F = saved
        for h in handles:
            h.remove()


def part_owners(net: nn.Module) -> dict[nn.Module, str]:
    """Each module of a part → the part's label (for counting FLOPs per part)."""
    root = mvss_of(net)
    owners: dict[nn.Module, str] = {}
    for label, paths in PART_MODULES.items():
        for path in paths:
            module = _module(root, path)
            if module is not None:
                owners[module] = label
    for m in _edge_modules(root):
        owners[m] = EDGE
    return owners


def profile_parts(
    net: nn.Module, x: torch.Tensor, runs: int, device: torch.device | None = None
) -> tuple[dict[str, float], str]:
    """Mean milliseconds per part over ``runs`` profiled forwards, and the top operators."""
    labels = [*PART_MODULES, EDGE, UPSAMPLING]
    with torch.inference_mode():
        net(x)  # warm-up (allocations, oneDNN primitive caches)
        synchronize(device)
        with part_ranges(net, device), profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                with record_function("whole forward"):
                    net(x)
                    synchronize(device)
    times: dict[str, float] = {}
    for event in prof.events():
        if event.name in labels or event.name == "whole forward":
            times[event.name] = times.get(event.name, 0.0) + event.cpu_time_total / 1e3
    ops = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15)
    return {k: v / runs for k, v in times.items()}, ops


def run(argv: list[str]) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--path", choices=PATH_NAMES, default="fast-winograd")
    p.add_argument("--device", default="auto", help="auto (the GPU when present), cpu, cuda")
    p.add_argument("--size", type=at_least(64), default=512)
    p.add_argument("--runs", type=positive_int, default=3)
    p.add_argument("--backbone", default="resnet50", choices=BACKBONES)
    p.add_argument("--weights", help="checkpoint (default: random init)")
    args = p.parse_args(argv)

    device = bench_device(args.device)
    if device.type == "cpu":  # as the command-line tools run
        keep_freed_memory()
    if args.path.startswith("int8") and device.type != "cpu":
        raise UsageError("the int8 path runs on x86 CPUs only", f"--device {args.device}")
    base = calibrated_model(args.backbone, args.size, 0, False, args.weights)
    x = normalize_bgr_batch(torch.from_numpy(synthetic_images(1, args.size, seed=3)))
    net = inference_path(base, args.path, calibration=x).to(device)
    x = x.to(device)
    # FlopCounterMode has no formula for oneDNN's int8 convolutions; they multiply as
    # many values as the bf16 layers they replace, so the int8 path counts those. Nor for
    # packed convolutions: it counts the same layers unpacked (the same arithmetic).
    flop_path = {"int8": "fast-winograd", "int8-winograd4": "fast-winograd4"}.get(
        args.path, args.path
    )
    flop_net = inference_path(base, flop_path)
    unpack_convolutions(flop_net)
    flop_net = flop_net.to(device)
    flops = count_flops(flop_net, x, part_owners(flop_net))
    times, ops = profile_parts(net, x, args.runs, device)
    total_t, total_f = times["whole forward"], flops["total"]
    rows = []
    for label in [*PART_MODULES, EDGE, UPSAMPLING]:
        if label in times or label in flops:
            rows.append((label, times.get(label, 0.0), flops.get(label, 0.0)))
    other_t = total_t - sum(t for _, t, _ in rows)
    other_f = total_f - sum(f for _, _, f in rows)
    rows.append(("other (casts, concatenation)", other_t, other_f))
    print(ops)
    print(
        f"path {args.path} on {device}, {args.size}², batch 1, "
        f"mean of {args.runs} profiled forwards"
    )
    print(f"{'part':34s} {'ms':>8s} {'time %':>7s} {'GFLOP':>7s} {'FLOP %':>7s} {'GFLOP/s':>8s}")
    result = []
    for label, t, f in rows:
        rate = f / (t / 1e3) / 1e9 if t > 0 else 0.0
        print(
            f"{label:34s} {t:8.1f} {100 * t / total_t:6.1f}% {f / 1e9:7.1f} "
            f"{100 * f / total_f:6.1f}% {rate:8.0f}"
        )
        result.append({"part": label, "ms": t, "gflop": f / 1e9, "gflops": rate})
    print(f"{'whole forward':34s} {total_t:8.1f} {100.0:6.1f}% {total_f / 1e9:7.1f} {100.0:6.1f}%")
    write_result(
        f"profile_{args.path}",
        {
            "path": args.path,
            "device": str(device),
            "size": args.size,
            "total_ms": total_t,
            "parts": result,
        },
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
