"""Thread and allocator settings for one inference path, each measured alone.

Why: on CPU the same forward can gain from a different ``malloc`` (jemalloc, tcmalloc
preloaded), from pinning OpenMP threads, or lose from fewer threads; none of that is in
the code, so it is measured here, each setting in a fresh process (an allocator can only
be preloaded at start), the path and the input otherwise the same. Settings whose library
is not installed are reported as skipped. Writes bench/results/runtime_env_<path>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from bench.common_bench import ROOT, write_result
from common.fast import PATH_NAMES
from common.usage import Parser, at_least, positive_int, run_cli
from models import BACKBONES

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


def one(path: str, size: int, backbone: str, runs: int) -> dict:
    """Median forward seconds of ``path`` in this process."""
    import torch

    from bench.common_bench import calibrated_model, synthetic_images
    from common.fast import inference_path
    from common.transforms import normalize_bgr_batch

    base = calibrated_model(backbone, size)
    x = normalize_bgr_batch(torch.from_numpy(synthetic_images(1, size, seed=3)))
    net = inference_path(base, path, calibration=x)
    times = []
    with torch.inference_mode():
        net(x)
        for _ in range(runs):
            start = time.perf_counter()
            net(x)
            times.append(time.perf_counter() - start)
    return {"median_s": statistics.median(times), "threads": torch.get_num_threads()}


def run(argv: list[str]) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--path", choices=PATH_NAMES, default="fast-winograd")
    p.add_argument("--size", type=at_least(64), default=512)
    p.add_argument("--backbone", default="resnet50", choices=BACKBONES)
    p.add_argument("--runs", type=positive_int, default=5)
    p.add_argument("--rounds", type=positive_int, default=2, help="passes over the settings")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print(json.dumps(one(args.path, args.size, args.backbone, args.runs)))
        return 0
    threads = len(os.sched_getaffinity(0))
    plan = settings(threads)
    cmd = [sys.executable, "-m", "bench.bench_runtime_env", "--one", "--path", args.path]
    cmd += ["--size", str(args.size), "--backbone", args.backbone, "--runs", str(args.runs)]
    medians: dict[str, list[float]] = {name: [] for name, env in plan.items() if env is not None}
    for _ in range(args.rounds):  # rounds interleave the settings, so drift hits all
        for name in medians:
            env = {**os.environ, **plan[name]}
            res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
            if res.returncode != 0:
                print(f"{name}: failed\n{res.stderr[-2000:]}", file=sys.stderr)
                return 1
            medians[name].append(json.loads(res.stdout.strip().splitlines()[-1])["median_s"])
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


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
