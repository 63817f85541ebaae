"""Training step (forward, MVSS loss, backward, fused Adam), paths side by side
(interleaved, median of --runs after warm-up).

Without ``--ddp``: on CPU, fp32 eager vs bf16 autocast + channels_last, for each
``--configs`` SIZExBATCH. Both paths use the fused Adam the training engine uses;
``--loop-adam`` adds an fp32 path with PyTorch's default per-tensor CPU Adam, to show
what fusing the step is worth. Writes bench/results/train.json.

With ``--ddp``, run under torchrun (``torchrun --nproc_per_node 2 -m bench.train
--ddp``): what DDP's ``find_unused_parameters=True`` costs per training step. Each
process holds two identical DDP-wrapped models, one with ``find_unused_parameters`` off
(the default of the training engine, which makes every parameter take part in every
step) and one with it on, and times their steps interleaved, on a mixed batch of
``--batch`` images of ``--size``² per process. Rank 0 prints and writes
bench/results/ddp.json.

Usage:
  python -m bench.train [--configs 256x2 256x8 512x2 512x8] [--runs 5] [--loop-adam]
  torchrun --nproc_per_node 2 -m bench.train --ddp [--size 256] [--batch 2] [--runs 7]
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import warnings
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from bench.shared import int_pair, interleaved_medians, write_result
from common.core.user_errors import Parser, UsageError, at_least, positive_int, run_cli
from common.training.losses import MVSSLoss
from common.training.optim import freeze_unused
from models import BACKBONES, get_mvss

CPU = torch.device("cpu")


def make_step(
    size: int,
    batch: int,
    backbone: str,
    *,
    bf16: bool = False,
    fused: bool = True,
    find_unused: bool | None = None,
    device: torch.device = CPU,
) -> Callable[[], None]:
    """One training step on a fixed random batch: fp32, or bf16 autocast + channels_last;
    Adam fused or per-tensor; wrapped in DDP (``find_unused_parameters=find_unused``,
    parameters the model never uses frozen, labels mixed) unless ``find_unused`` is None
    (then every image is manipulated)."""
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = get_mvss(backbone=backbone).train().to(device)
    ddp = find_unused is not None
    if ddp:
        freeze_unused(net)
    if bf16:
        net = net.to(memory_format=torch.channels_last)
    forward = DistributedDataParallel(net, find_unused_parameters=find_unused) if ddp else net
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4, fused=fused)
    g = torch.Generator().manual_seed(dist.get_rank() if ddp else 0)
    e = (size + 3) // 4
    x = torch.randn(batch, 3, size, size, generator=g).to(device)
    if bf16:
        x = x.contiguous(memory_format=torch.channels_last)
    mask = (torch.rand(batch, 1, size, size, generator=g) > 0.7).float().to(device)
    edge = (torch.rand(batch, 1, e, e, generator=g) > 0.9).float().to(device)
    labels = [i % 2 for i in range(batch)] if ddp else [1] * batch
    label = torch.tensor(labels, device=device)
    criterion = MVSSLoss()

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            edge_logits, seg = forward(x)
        loss = criterion(edge_logits, seg, mask, edge, label)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def run_single(args: argparse.Namespace) -> int:
    """fp32 eager vs bf16 autocast + channels_last (and per-tensor Adam), on CPU."""
    rows = []
    for spec in args.configs:
        size, batch = (int(v) for v in spec.split("x"))
        fns = {
            "fp32 eager": make_step(size, batch, args.backbone),
            "bf16 autocast + channels_last": make_step(size, batch, args.backbone, bf16=True),
        }
        if args.loop_adam:
            fns["fp32 eager, per-tensor Adam"] = make_step(size, batch, args.backbone, fused=False)
        med = interleaved_medians(fns, runs=args.runs)
        fp32, bf16 = med["fp32 eager"], med["bf16 autocast + channels_last"]
        row = {
            "size": size,
            "batch": batch,
            "fp32_s": fp32,
            "bf16_s": bf16,
            "fp32_img_s": batch / fp32,
            "bf16_img_s": batch / bf16,
            "speedup": fp32 / bf16,
            **(
                {"fp32_loop_adam_img_s": batch / med["fp32 eager, per-tensor Adam"]}
                if args.loop_adam
                else {}
            ),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        }
        rows.append(row)
        print(
            f"{size}×{size} batch {batch}: fp32 {row['fp32_img_s']:.2f} img/s, bf16+CL "
            f"{row['bf16_img_s']:.2f} img/s → {row['speedup']:.2f}× "
            + (
                f"(fp32 with per-tensor Adam {row['fp32_loop_adam_img_s']:.2f} img/s) "
                if args.loop_adam
                else ""
            )
            + f"(process peak RSS so far {row['peak_rss_mb']:.0f} MB)",
            flush=True,
        )
    write_result("train", {"backbone": args.backbone, "runs": args.runs, "rows": rows})
    return 0


def run_ddp(args: argparse.Namespace) -> int:
    """find_unused_parameters off vs on, in each process of a torchrun group."""
    if "WORLD_SIZE" not in os.environ:
        raise UsageError(
            "needs several processes",
            "--ddp",
            "run it under torchrun: torchrun --nproc_per_node 2 -m bench.train --ddp",
        )
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else CPU
    if cuda:
        torch.cuda.set_device(device)
    fns = {
        f"find_unused_parameters={on}": make_step(
            args.size, args.batch, args.backbone, find_unused=on, device=device
        )
        for on in (False, True)
    }
    med = interleaved_medians(fns, runs=args.runs, device=device)
    if dist.get_rank() == 0:
        off, on = med["find_unused_parameters=False"], med["find_unused_parameters=True"]
        world = dist.get_world_size()
        print(
            f"{world} processes, {args.backbone} {args.size}² batch {args.batch}/process on "
            f"{device.type}: off {off:.3f} s/step, on {on:.3f} s/step → "
            f"{100 * (on / off - 1):+.1f}%"
        )
        options = {k: getattr(args, k) for k in ("backbone", "size", "batch", "runs")}
        write_result(
            "ddp", {**options, "world": world, "device": device.type, "off_s": off, "on_s": on}
        )
    dist.destroy_process_group()
    return 0


def run(argv: list[str]) -> int:
    p = Parser(description=__doc__.splitlines()[0] + " " + __doc__.splitlines()[1])
    p.add_argument("--backbone", default="resnet50", choices=BACKBONES)
    p.add_argument("--runs", type=positive_int, help="timed steps per path (5; 7 with --ddp)")
    p.add_argument("--ddp", action="store_true", help="find_unused_parameters off vs on")
    p.add_argument(
        "--configs", nargs="+", type=int_pair, help="SIZExBATCH (256x2 256x8 512x2 512x8)"
    )
    p.add_argument("--loop-adam", action="store_true", help="also time per-tensor CPU Adam")
    p.add_argument("--size", type=at_least(64), help="with --ddp (256)")
    p.add_argument("--batch", type=positive_int, help="with --ddp, per process (2)")
    args = p.parse_args(argv)
    if args.ddp:
        other = {"--configs": args.configs, "--loop-adam": args.loop_adam or None}
    else:
        other = {"--size": args.size, "--batch": args.batch}
    wrong = [option for option, value in other.items() if value is not None]
    if wrong:
        raise UsageError("not with --ddp" if args.ddp else "only with --ddp", wrong[0])
    if args.ddp:
        args.size, args.batch, args.runs = args.size or 256, args.batch or 2, args.runs or 7
        return run_ddp(args)
    if "WORLD_SIZE" in os.environ:
        raise UsageError("under torchrun this is the DDP benchmark", hint="add --ddp")
    args.runs = args.runs or 5
    args.configs = args.configs or ["256x2", "256x8", "512x2", "512x8"]
    return run_single(args)


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
