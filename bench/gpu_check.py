"""One GPU check: every CUDA path of the toolkit, run once, in one report.

Why: CUDA code here is written to PyTorch's documented API and tested on CPU; the day a
GPU is at hand, this one command shows whether each path runs and what it costs, in under
8 minutes on one recent GPU (``--budget-s``; later parts are skipped, and said so, when
the budget runs out). Parts:

1. ``parity``: the model on CUDA against CPU fp32, same weights and input (max relative
   difference of the segmentation logits).
2. ``inference``: images/s at ``--size`` for fp32, fp16 and bf16 autocast, channels_last,
   the fast path, at batch 1 and 16, and ``torch.compile`` where it builds in time.
3. ``training``: steps of each task (binary, three-class, classifier) under fp16 with a
   gradient scaler and under bf16: finite loss, a gradient for every trainable
   parameter, images/s at batch 8 and 16, peak memory; under fp16 at batch 8, 30 steps
   and the steps the scaler skipped (gradients not finite) and its scale: NaN gradients
   with finite losses once made fp16 training learn nothing, unseen in a 3-step check.
4. ``scripts``: ``train_demo.py`` under torchrun (1 process, NCCL) for a few steps on
   generated data, then ``benchmark.py`` on a small generated set with its checkpoint.
5. ``tiled``: full-resolution tiled inference of a 4000×3000 image: time and peak memory.

Writes ``<out>/gpu_check.json`` and ``<out>/gpu_check.md``. Without CUDA it says so in
one line and exits with 2, doing nothing else.
Usage: python -m bench.gpu_check [--out bench/results/gpu_check] [--budget-s 480]
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from bench.shared import (
    ROOT,
    calibrated_model,
    interleaved_medians,
    synchronize,
    synthetic_images,
)
from common.core.user_errors import (
    Parser,
    UsageError,
    at_least,
    positive_int,
    require_writable_dir,
    run_cli,
)
from models import BACKBONES

PARTS = ("parity", "inference", "training", "scripts", "tiled")
TASK_SCRIPTS = {
    "localization": "train_demo",
    "three_class": "train_demo_nclass3",
    "classification": "train_demo_cls",
}


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = Parser(prog="python -m bench.gpu_check", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "gpu_check"))
    p.add_argument("--device", default="cuda", help="the CUDA device to check (cuda)")
    p.add_argument("--backbone", choices=BACKBONES, default="resnet50")
    p.add_argument("--size", type=at_least(64), default=512, help="inference side (512)")
    p.add_argument(
        "--budget-s",
        dest="budget_s",
        type=at_least(10),
        default=480,
        help="seconds for the whole check; parts that would start later are skipped (480)",
    )
    p.add_argument("--runs", type=positive_int, default=5, help="timed runs per path (5)")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip compile")
    p.add_argument(
        "--parts",
        nargs="+",
        choices=PARTS,
        default=list(PARTS),
        help=f"which parts to run (default all: {' '.join(PARTS)})",
    )
    return p.parse_args(argv)


def require_cuda(device: str) -> torch.device:
    """The CUDA device, or a :class:`UsageError` (one line, exit 2) on a machine without."""
    if not torch.cuda.is_available():
        raise UsageError(
            "no CUDA device here: the GPU check runs only on a machine with one",
            f"--device {device}",
        )
    if not device.startswith("cuda"):
        raise UsageError("the GPU check checks a CUDA device", f"--device {device}")
    dev = torch.device(device)
    if dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UsageError(f"this machine has {torch.cuda.device_count()} CUDA device(s)", device)
    return dev


# ----------------------------------------------------------------------------- parts


def _reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_mib(device: torch.device) -> float | None:
    """Peak GPU memory since the last reset (None off CUDA: the parts also run on CPU,
    so their code is tested there)."""
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None


def check_parity(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    net = calibrated_model(args.backbone, args.size)
    x = torch.from_numpy(synthetic_images(1, args.size, seed=1)).permute(0, 3, 1, 2)
    x = (x.float() / 255 - 0.5) / 0.5
    with torch.inference_mode():
        cpu = net(x).seg
        gpu = net.to(device)(x.to(device)).seg.float().cpu()
    diff = (gpu - cpu).abs().max().item()
    scale = cpu.abs().max().item()
    return {
        "max_abs_diff": diff,
        "max_rel_diff": diff / max(scale, 1e-12),
        # PyTorch's defaults: cuDNN convolutions may use TF32, matrix products not
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32,
        "matmul_allow_tf32": torch.backends.cuda.matmul.allow_tf32,
    }


def _inference_paths(
    net: nn.Module, device: torch.device, compile_model: bool
) -> dict[str, tuple[nn.Module, str, bool]]:
    """name → (model, autocast mode, channels_last)."""
    from common.accel.fast_path import optimize_for_inference

    net = net.to(device).eval()
    # a copy: .to(memory_format=...) changes a module in place, the others stay NCHW
    channels_last_net = copy.deepcopy(net).to(memory_format=torch.channels_last)
    paths: dict[str, tuple[nn.Module, str, bool]] = {
        "fp32": (net, "off", False),
        "fp16 autocast": (net, "fp16", False),
        "bf16 autocast": (net, "bf16", False),
        "fp16 autocast + channels_last": (channels_last_net, "fp16", True),
    }
    fast = optimize_for_inference(net, torch.bfloat16, True).to(device)
    paths["fast path (bf16, channels_last)"] = (fast, "off", True)
    if compile_model:
        compiled = torch.compile(channels_last_net)
        paths["torch.compile fp16 + channels_last"] = (compiled, "fp16", True)
    return paths


def check_inference(
    args: argparse.Namespace, device: torch.device, deadline: float
) -> dict[str, Any]:
    from common.core.runtime import autocast

    base = calibrated_model(args.backbone, args.size)
    rows: list[dict[str, Any]] = []
    paths = _inference_paths(base, device, args.compile and time.monotonic() < deadline - 120)
    for batch in (1, 16):
        x = torch.randn(batch, 3, args.size, args.size, device=device)
        for name, (model, amp, channels_last) in paths.items():
            if time.monotonic() > deadline:
                rows.append({"path": name, "batch": batch, "skipped": "out of time"})
                continue
            xin = x.to(memory_format=torch.channels_last) if channels_last else x

            def forward(m: nn.Module = model, a: str = amp, inp: torch.Tensor = xin) -> None:
                with torch.inference_mode(), autocast(device, a):
                    m(inp)

            try:
                _reset_peak(device)
                seconds = interleaved_medians({name: forward}, args.runs, 2, device)[name]
                rows.append(
                    {
                        "path": name,
                        "batch": batch,
                        "images_per_s": batch / seconds,
                        "peak_mib": _peak_mib(device),
                    }
                )
            except Exception as exc:  # a path that does not build or run: said, not fatal
                rows.append({"path": name, "batch": batch, "error": _reason(exc)})
    return {"size": args.size, "rows": rows}


def _training_batches(root: Path, size: int, desensitise: float) -> Path:
    """A small generated set (``train.txt``), made once per kind."""
    out = root / f"data_{size}_{desensitise}"
    if not (out / "train.txt").is_file():
        cmd = [sys.executable, "make_synthetic_data.py", "--out", str(out), "--train", "32"]
        cmd += ["--val", "8", "--test", "8", "--test-seen", "0", "--size", str(size)]
        cmd += ["--seed", "0", "--workers", "2", "--desensitise", str(desensitise)]
        subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, text=True)
    return out


def _endless(make_loader: Callable[[int], Any]) -> Iterator[dict[str, Any]]:
    """Batches epoch after epoch: a small generated set holds fewer than three batches of
    16 (the loader drops a last short batch)."""
    for epoch in itertools.count():
        batches = 0
        for batch in make_loader(epoch):
            batches += 1
            yield batch
        if not batches:
            raise RuntimeError("the generated set holds no whole batch")


def _task_step(
    task_name: str,
    data: Path,
    batch: int,
    amp: str,
    device: torch.device,
    size: int,
    backbone: str = "resnet50",
    steps: int = 3,
) -> dict[str, Any]:
    """``steps`` optimiser steps of ``task_name`` through the training engine's own
    pieces (timed after the first)."""
    from common.core.runtime import autocast
    from common.training.config import parse_config, read_defaults
    from common.training.loaders import build_dataset, train_loader
    from common.training.optim import build_optimizer, freeze_unused, scaler_step
    from common.training.tasks import ClassificationTask, LocalizationTask, ThreeClassTask

    tasks = {
        "localization": LocalizationTask,
        "three_class": ThreeClassTask,
        "classification": ClassificationTask,
    }
    defaults, _ = read_defaults(ROOT / "configs" / f"{TASK_SCRIPTS[task_name]}.yaml")
    cfg = parse_config(
        defaults,
        "gpu check",
        [
            *("--train_list", str(data / "train.txt"), "--size", str(size)),
            *("--batch_size", str(batch), "--workers", "2", "--device", str(device)),
            *("--backbone", backbone),
        ],
    )
    task = tasks[task_name](cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random initialisation: no ImageNet weights here
        model = task.build_model(cfg)
    freeze_unused(model)  # as the engine: the backbones' unused fc layers
    model = model.to(device).train()
    optimizer = build_optimizer([p for p in model.parameters() if p.requires_grad], cfg)
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    dataset = build_dataset(cfg["train_list"], cfg, task.nclass, train=True)
    loader = _endless(lambda epoch: train_loader(dataset, cfg, epoch=epoch))
    _reset_peak(device)
    losses, seconds, missing = [], [], []
    skipped = 0  # steps the gradient scaler skipped: their gradients were not finite
    for step in range(steps):
        sample = next(loader)
        sample = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in sample.items()}
        synchronize(device)
        start = time.perf_counter()
        with autocast(device, amp):
            parts = task.loss(model(sample["image"]), sample)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(parts["loss"]).backward()
        scaler.unscale_(optimizer)  # true gradients (a scaler may skip an overflowing step)
        if step == 0:
            missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        skipped += scaler_step(scaler, optimizer)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
        losses.append(float(parts["loss"].detach()))
    return {
        "task": task_name,
        "amp": amp,
        "batch": batch,
        "steps": steps,
        "losses_finite": bool(np.isfinite(losses).all()),
        "scaler_skipped_steps": skipped,
        "loss_scale": scaler.get_scale() if scaler.is_enabled() else None,
        "params_without_grad": missing[:5],
        "num_params_without_grad": len(missing),
        "images_per_s": batch / float(np.median(seconds[1:])),
        "peak_mib": _peak_mib(device),
    }


def check_training(
    args: argparse.Namespace, device: torch.device, deadline: float, work: Path
) -> dict[str, Any]:
    rows: list[dict[str, Any]] = []
    size = min(args.size, 512)
    for task_name in TASK_SCRIPTS:
        data = _training_batches(work, size, 0.3 if task_name == "three_class" else 0.0)
        for amp in ("fp16", "bf16"):
            for batch in (8, 16):
                if time.monotonic() > deadline:
                    rows.append({"task": task_name, "amp": amp, "batch": batch, "skipped": "time"})
                    continue
                try:
                    steps = 30 if (amp, batch) == ("fp16", 8) else 3
                    step = _task_step(
                        task_name, data, batch, amp, device, size, args.backbone, steps
                    )
                    rows.append(step)
                except Exception as exc:
                    row = {"task": task_name, "amp": amp, "batch": batch}
                    rows.append({**row, "error": _reason(exc)})
    return {"size": size, "rows": rows}


def check_scripts(
    args: argparse.Namespace, device: torch.device, deadline: float, work: Path
) -> dict[str, Any]:
    data = _training_batches(work, 256, 0.0)
    run_dir = work / "ddp_run"
    train = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "1"]
    train += ["train_demo.py", "--train_list", str(data / "train.txt")]
    train += ["--val_list", str(data / "val.txt"), "--epochs", "1", "--max_steps_per_epoch", "4"]
    train += ["--size", "256", "--batch_size", "4", "--device", str(device), "--amp", "auto"]
    train += ["--backbone", args.backbone, "--workers", "2", "--out_dir", str(run_dir)]
    out: dict[str, Any] = {"ddp_train": _timed_command(train, deadline)}
    checkpoint = run_dir / "checkpoints" / "best.pt"
    if checkpoint.is_file():
        bench = [sys.executable, "benchmark.py", "--model_path", str(checkpoint)]
        bench += ["--sets", f"gen={data / 'test.txt'}", "--save_dir", str(work / "benchmark")]
        bench += ["--resize", "256", "--device", str(device), "--perturb", "jpeg:70"]
        out["benchmark"] = _timed_command(bench, deadline)
    return out


def _timed_command(cmd: list[str], deadline: float) -> dict[str, Any]:
    timeout = max(10.0, deadline - time.monotonic())
    start = time.perf_counter()
    # the repository first, then whatever the machine's own path adds (packages carried
    # beside an image's Python live there)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")]))
    env = {**os.environ, "PYTHONPATH": path}
    try:
        proc = subprocess.run(
            cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    except subprocess.TimeoutExpired:
        return {"command": " ".join(cmd[1:]), "error": f"timed out after {timeout:.0f} s"}
    result = {
        "command": " ".join(cmd[1:]),
        "exit_code": proc.returncode,
        "seconds": time.perf_counter() - start,
    }
    if proc.returncode != 0:
        result["error"] = proc.stderr.strip().splitlines()[-1:] or ["(no output)"]
    return result


def check_tiled(args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    import cv2

    from common.accel.fast_path import optimize_for_inference
    from common.inference.single_image import RunOptions, predict_tiled, tile_windows

    net = calibrated_model(args.backbone, 512)
    model = optimize_for_inference(net, torch.bfloat16, True).to(device)
    image = cv2.resize(synthetic_images(1, 1024, seed=3)[0], (4000, 3000))
    opts = RunOptions(device=device, channels_last=True, tile=512, tile_stride=384, tile_batch=4)
    _reset_peak(device)
    start = time.perf_counter()
    prob = predict_tiled(model, image, opts)
    synchronize(device)
    return {
        "image": "4000×3000",
        "tiles": len(tile_windows(3000, 4000, 512, 384)),
        "seconds": time.perf_counter() - start,
        "peak_mib": _peak_mib(device),
        "map_finite": bool(np.isfinite(prob).all()),
    }


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc) else ''}"[:300]


# ----------------------------------------------------------------------------- report


def environment(device: torch.device | None) -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
    }
    if device is not None:
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1))
        info["bf16_supported"] = torch.cuda.is_bf16_supported()
    return info


def markdown(report: dict[str, Any]) -> str:
    """The report as Markdown: the environment, then each part's rows or values."""
    env = report.get("environment", {})
    lines = ["# GPU check", "", ", ".join(f"{k}: {v}" for k, v in env.items()), ""]
    for part in PARTS:
        if part not in report.get("parts", {}):
            continue
        entry = report["parts"][part]
        lines += [f"## {part}", ""]
        if "error" in entry and "result" not in entry:
            lines += [f"failed: {entry['error']}", ""]
            continue
        if "skipped" in entry:
            lines += [f"skipped: {entry['skipped']}", ""]
            continue
        result = entry["result"]
        rows = result.get("rows") if isinstance(result, dict) else None
        if rows:
            keys = list(dict.fromkeys(k for row in rows for k in row))
            lines += ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
            lines += ["| " + " | ".join(_cell(row.get(k)) for k in keys) + " |" for row in rows]
        else:
            lines += [f"- {k}: {_cell(v)}" for k, v in result.items()]
        lines += ["", f"({entry['seconds']:.1f} s)", ""]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_cell(v)}" for k, v in value.items())
    return "" if value is None else str(value)


def write_report(out: Path, report: dict[str, Any]) -> tuple[Path, Path]:
    """``gpu_check.json`` and ``gpu_check.md`` under ``out`` (atomic writes)."""
    out.mkdir(parents=True, exist_ok=True)
    paths = (out / "gpu_check.json", out / "gpu_check.md")
    texts = (json.dumps(report, indent=2, default=str), markdown(report))
    for path, text in zip(paths, texts, strict=True):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text + "\n")
        tmp.replace(path)
    return paths


def run_parts(
    parts: dict[str, Callable[[], dict[str, Any]]], deadline: float
) -> dict[str, dict[str, Any]]:
    """Each part in turn: its result and time, its error (the others still run), or
    skipped when the budget is spent."""
    done: dict[str, dict[str, Any]] = {}
    for name, part in parts.items():
        if time.monotonic() > deadline:
            done[name] = {"skipped": "out of time (--budget-s)"}
            continue
        start = time.perf_counter()
        try:
            done[name] = {"result": part()}
        except Exception as exc:
            done[name] = {"error": _reason(exc), "trace": traceback.format_exc()[-2000:]}
        done[name]["seconds"] = time.perf_counter() - start
        print(f"{name}: {'failed' if 'error' in done[name] else 'done'}", flush=True)
    return done


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    device = require_cuda(args.device)
    out = require_writable_dir(args.out, "--out")
    deadline = time.monotonic() + args.budget_s
    with tempfile.TemporaryDirectory(prefix="gpu_check_") as tmp:
        work = Path(tmp)
        every = {
            "parity": lambda: check_parity(args, device),
            "inference": lambda: check_inference(args, device, deadline),
            "training": lambda: check_training(args, device, deadline, work),
            "scripts": lambda: check_scripts(args, device, deadline, work),
            "tiled": lambda: check_tiled(args, device),
        }
        parts = run_parts({k: v for k, v in every.items() if k in args.parts}, deadline)
    report = {"environment": environment(device), "parts": parts}
    json_path, md_path = write_report(out, report)
    print(f"report: {md_path} (and {json_path.name})")
    return 0 if all("error" not in p for p in parts.values()) else 1


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
