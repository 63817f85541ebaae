"""Benchmarks that run each configuration in a fresh process: model cost, tiled
full-resolution inference, thread and allocator settings.

Why a fresh process per configuration: peak resident memory (``ru_maxrss``) is the
high-water mark of a whole process, so a configuration measured alone has a peak of its
own; and an allocator can only be preloaded (``LD_PRELOAD``), and OpenMP's settings are
only read, when a process starts. The parent runs ``python -m bench.isolated <mode> --one
…`` from the repository root for each configuration (with extra environment variables
where the mode sets them), reads the JSON of its last stdout line, prints a table and
writes the results to bench/results/.

Modes:

- ``model``: parameters, FLOPs (counted per operator), forward time and peak memory per
  device, precision, memory format and batch size. Writes bench/results/model.json (or
  ``--json``).
- ``tiled``: full-resolution tiled inference, peak resident memory and time against tile
  count, one image size per process. ``--path`` picks the same inference paths as the
  profiler (``fast-winograd``, the CLI's ``--fast --amp bf16 --channels-last
  --winograd``, by default; ``fp32`` for the plain model); the GPU when there is one
  (``--device auto``). Writes bench/results/tiled_<path>.json.
- ``runtime-env``: thread and allocator settings for one inference path, each measured
  alone. On CPU the same forward can gain from a different ``malloc`` (jemalloc,
  tcmalloc preloaded), from pinning OpenMP threads, or lose from fewer threads; none of
  that is in the code, so it is measured here, the path and the input otherwise the
  same, the settings interleaved over ``--rounds``. Settings whose library is not
  installed are reported as skipped. Writes bench/results/runtime_env_<path>.json.

Times are medians of ``--runs`` after warm-up (``bench.shared.interleaved_medians``).

Usage:
  python -m bench.isolated model [--size 512] [--batches 1 4] [--runs 5] [--json out.json]
  python -m bench.isolated tiled [--sizes 2000x1500 4000x3000] [--path fast-winograd]
  python -m bench.isolated runtime-env [--path fast-winograd] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import torch

from bench.shared import (
    ROOT,
    bench_device,
    calibrated_model,
    count_flops,
    int_pair,
    interleaved_medians,
    synchronize,
    synthetic_images,
    write_result,
)
from common.accel.paths import PATH_NAMES, inference_path
from common.core.user_errors import (
    Parser,
    UsageError,
    at_least,
    check_stride,
    non_negative_int,
    positive_int,
    require_writable_dir,
    run_cli,
)
from common.data.transforms import normalize_bgr_batch
from common.inference.single_image import RunOptions, predict_tiled, tile_windows
from models import BACKBONES


class ConfigurationError(Exception):
    """A configuration's process exited with an error (its stderr's end is the message)."""


def run_isolated(mode: str, args: list[str], env: dict[str, str] | None = None) -> dict:
    """Run one configuration, ``python -m bench.isolated <mode> --one <args>``, in a fresh
    process from the repository root (with ``env`` added to this environment) and return
    the JSON of its last stdout line."""
    cmd = [sys.executable, "-m", "bench.isolated", mode, "--one", *args]
    full_env = {**os.environ, **env} if env else None
    res = subprocess.run(cmd, capture_output=True, text=True, env=full_env, cwd=ROOT)
    if res.returncode != 0:
        shown = " ".join([*(f"{k}={v}" for k, v in (env or {}).items()), *cmd[1:]])
        raise ConfigurationError(
            f"{shown}: exit code {res.returncode}\n{res.stderr[-2000:].rstrip()}"
        )
    return json.loads(res.stdout.strip().splitlines()[-1])


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (``ru_maxrss`` is in kB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------- model


def model_one(args: argparse.Namespace) -> dict:
    """Forward time and peak memory of one configuration, in this process."""
    device = torch.device(args.device)
    net = calibrated_model(args.backbone).to(device)
    x = torch.randn(args.batch, 3, args.size, args.size, device=device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[args.precision]

    def step() -> None:
        with (
            torch.inference_mode(),
            torch.autocast(device.type, dtype=dtype, enabled=dtype is not None),
        ):
            net(x)

    for _ in range(args.warmup):  # before the GPU's peak is reset: first-call workspaces
        step()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    median = interleaved_medians({"forward": step}, args.runs, warmup=0, device=device)["forward"]
    return {
        "device": args.device,
        "precision": args.precision,
        "channels_last": args.channels_last,
        "batch": args.batch,
        "size": args.size,
        "median_s": median,
        "s_per_image": median / args.batch,
        "runs": args.runs,
        "peak_mem_mb": (
            torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else peak_rss_mb()
        ),
    }


def model_run(args: argparse.Namespace) -> int:
    require_writable_dir(args.json.parent, "--json")
    if args.json.is_dir():
        raise UsageError("is a folder, not a file", f"--json {args.json}")
    net = calibrated_model(args.backbone)
    params = sum(p.numel() for p in net.parameters())
    flops = count_flops(net, torch.randn(1, 3, args.size, args.size))["total"]
    del net
    configs = [("cpu", p, False) for p in ("fp32", "bf16")] + [("cpu", "bf16", True)]
    if torch.cuda.is_available():
        configs += [("cuda", p, True) for p in ("fp32", "fp16", "bf16")]
    rows = []
    for device, precision, cl in configs:
        for batch in args.batches:
            one = ["--device", device, "--precision", precision, "--batch", str(batch)]
            one += ["--size", str(args.size), "--runs", str(args.runs)]
            one += ["--warmup", str(args.warmup), "--backbone", args.backbone]
            one += ["--channels-last"] if cl else []
            row = run_isolated("model", one)
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


# ----------------------------------------------------------------------------- tiled


def tiled_one(args: argparse.Namespace) -> dict:
    """One image of ``--image`` WxH through the tiled path, in this process."""
    width, height = (int(v) for v in args.image.split("x"))
    device = bench_device(args.device)
    base = calibrated_model()
    if args.path == "fp32":
        model = base.to(device)
    else:
        calibration = None
        if args.path.startswith("int8"):  # scales from forgeries at the tile size, as --int8 does
            calibration = normalize_bgr_batch(torch.from_numpy(synthetic_images(4, args.tile, 21)))
        model = inference_path(base, args.path, calibration).to(device)
    image = cv2.resize(synthetic_images(1, 1024, seed=3)[0], (width, height))
    opts = RunOptions(device=device, tile=args.tile, tile_stride=args.stride, tile_batch=4)
    start = time.perf_counter()  # one whole image, once: its first tiles warm the path up
    prob = predict_tiled(model, image, opts)
    synchronize(device)
    seconds = time.perf_counter() - start
    tiles = len(tile_windows(height, width, args.tile, args.stride))
    return {
        "width": width,
        "height": height,
        "tiles": tiles,
        "seconds": seconds,
        "s_per_tile": seconds / tiles,
        "map_shape": list(prob.shape),
        "peak_rss_mb": peak_rss_mb(),
    }


def tiled_run(args: argparse.Namespace) -> int:
    bench_device(args.device)  # a device this machine lacks: one line here, not per process
    rows = []
    for spec in args.sizes:
        one = ["--image", spec, "--tile", str(args.tile), "--stride", str(args.stride)]
        one += ["--path", args.path, "--device", args.device]
        row = run_isolated("tiled", one)
        rows.append(row)
        print(
            f"{spec}: {row['tiles']} tiles, {row['seconds']:.1f} s "
            f"({row['s_per_tile']:.3f} s/tile), "
            f"peak RSS {row['peak_rss_mb']:.0f} MB",
            flush=True,
        )
    write_result(f"tiled_{args.path}", {"rows": rows, "path": args.path})
    return 0


# ----------------------------------------------------------------------------- runtime-env

LIB_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib", "/usr/local/lib")
ALLOCATORS = {
    "jemalloc": ("libjemalloc.so.2",),
    "tcmalloc": ("libtcmalloc.so.4", "libtcmalloc_minimal.so.4"),
}


def _find_library(names: tuple[str, ...]) -> str | None:
    for folder in LIB_DIRS:
        for name in names:
            if (Path(folder) / name).is_file():
                return str(Path(folder) / name)
    return None


def settings(threads: int) -> dict[str, dict[str, str] | None]:
    """Setting name → extra environment (None: its library is missing)."""
    out: dict[str, dict[str, str] | None] = {"default": {}}
    for name, libs in ALLOCATORS.items():
        lib = _find_library(libs)
        out[f"{name} (LD_PRELOAD)"] = {"LD_PRELOAD": lib} if lib else None
    out["OpenMP threads pinned (OMP_PROC_BIND=close, OMP_PLACES=cores)"] = {
        "OMP_PROC_BIND": "close",
        "OMP_PLACES": "cores",
    }
    out["OpenMP busy-wait (OMP_WAIT_POLICY=ACTIVE)"] = {"OMP_WAIT_POLICY": "ACTIVE"}
    if threads > 1:
        out[f"{threads // 2} thread(s) instead of {threads}"] = {
            "OMP_NUM_THREADS": str(threads // 2)
        }
    return out


def runtime_env_one(args: argparse.Namespace) -> dict:
    """Median forward seconds of ``--path`` in this process (and its settings)."""
    base = calibrated_model(args.backbone, args.size)
    x = normalize_bgr_batch(torch.from_numpy(synthetic_images(1, args.size, seed=3)))
    net = inference_path(base, args.path, calibration=x)
    with torch.inference_mode():
        median = interleaved_medians({"forward": lambda: net(x)}, args.runs)["forward"]
    return {"median_s": median, "threads": torch.get_num_threads()}


def runtime_env_run(args: argparse.Namespace) -> int:
    plan = settings(len(os.sched_getaffinity(0)))
    one = ["--path", args.path, "--size", str(args.size), "--backbone", args.backbone]
    one += ["--runs", str(args.runs)]
    medians: dict[str, list[float]] = {name: [] for name, env in plan.items() if env is not None}
    for _ in range(args.rounds):  # rounds interleave the settings, so drift hits all
        for name in medians:
            medians[name].append(run_isolated("runtime-env", one, plan[name])["median_s"])
    base = statistics.median(medians["default"])
    print(f"path {args.path}, {args.size}², batch 1; median of {args.runs} × {args.rounds} rounds")
    print(f"{'setting':64s} {'s/img':>7s} {'vs default':>10s}")
    rows = []
    for name, env in plan.items():
        if env is None:
            print(f"{name:64s} {'skipped (library not installed)':>18s}")
            rows.append({"setting": name, "skipped": True})
            continue
        t = statistics.median(medians[name])
        print(f"{name:64s} {t:7.3f} {base / t:9.3f}×")
        rows.append({"setting": name, "s_per_image": t, "vs_default": base / t, "env": env})
    write_result(f"runtime_env_{args.path}", {"path": args.path, "size": args.size, "rows": rows})
    return 0


# ----------------------------------------------------------------------------- command line

MODES = {  # mode → (parent: all configurations, child: one configuration)
    "model": (model_run, model_one),
    "tiled": (tiled_run, tiled_one),
    "runtime-env": (runtime_env_run, runtime_env_one),
}


def parser() -> Parser:
    p = Parser(
        description=__doc__.splitlines()[0] + " " + __doc__.splitlines()[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="usage by mode:\n" + __doc__.split("Usage:\n")[1],
    )
    modes = p.add_subparsers(dest="mode", required=True, metavar="MODE")

    help_ = "parameters, FLOPs, forward time and peak memory"
    m = modes.add_parser("model", help=help_, description=help_)
    m.add_argument("--backbone", default="resnet50", choices=BACKBONES)
    m.add_argument("--size", type=at_least(64), default=512)
    m.add_argument("--batches", type=positive_int, nargs="+", default=[1, 4])
    m.add_argument("--runs", type=positive_int, default=5)
    m.add_argument("--warmup", type=non_negative_int, default=1)
    m.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "model.json")
    # internal: one configuration
    m.add_argument("--device", default="cpu", help=argparse.SUPPRESS)
    m.add_argument("--precision", default="fp32", help=argparse.SUPPRESS)
    m.add_argument("--channels-last", action="store_true", help=argparse.SUPPRESS)
    m.add_argument("--batch", type=int, default=1, help=argparse.SUPPRESS)

    help_ = "full-resolution tiled inference: peak memory and time against tile count"
    t = modes.add_parser("tiled", help=help_, description=help_)
    t.add_argument("--sizes", nargs="+", type=int_pair, default=["2000x1500", "4000x3000"])
    t.add_argument("--tile", type=at_least(64), default=512)
    t.add_argument("--stride", type=at_least(1), default=384)
    t.add_argument("--path", choices=("fp32", *PATH_NAMES), default="fast-winograd")
    t.add_argument("--device", default="auto", help="auto (the GPU when present), cpu, cuda")
    t.add_argument("--image", type=int_pair, default="1024x768", help=argparse.SUPPRESS)

    help_ = "thread and allocator settings for one inference path"
    r = modes.add_parser("runtime-env", help=help_, description=help_)
    r.add_argument("--path", choices=PATH_NAMES, default="fast-winograd")
    r.add_argument("--size", type=at_least(64), default=512)
    r.add_argument("--backbone", default="resnet50", choices=BACKBONES)
    r.add_argument("--runs", type=positive_int, default=5)
    r.add_argument("--rounds", type=positive_int, default=2, help="passes over the settings")

    for sub in (m, t, r):  # internal: run one configuration and print its JSON
        sub.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    return p


def run(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    if args.mode == "tiled":
        check_stride(args.stride, args.tile, "--stride", "--tile")
    parent, child = MODES[args.mode]
    if args.one:
        print(json.dumps(child(args)))
        return 0
    try:
        return parent(args)
    except ConfigurationError as exc:
        print(f"a configuration failed: {exc}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
