"""What DDP's ``find_unused_parameters=True`` costs per training step, side by side.

Run under torchrun, e.g. ``torchrun --nproc_per_node 2 -m bench.bench_ddp``. Each process
holds two identical DDP-wrapped models, one with ``find_unused_parameters`` off (the
default of the training engine, which makes every parameter take part in every step)
and one with it on, and times their steps interleaved (forward, MVSS loss, backward,
fused Adam); medians after warm-up. Rank 0 prints and writes bench/results/ddp.json."""

from __future__ import annotations

import argparse
import os
import sys
import warnings

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from bench.common_bench import interleaved_medians, write_result
from common.losses import MVSSLoss
from common.optim import freeze_unused
from common.usage import Parser, UsageError, at_least, positive_int, run_cli
from models import BACKBONES, get_mvss


def make_step(find_unused: bool, args: argparse.Namespace, device: torch.device):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = get_mvss(backbone=args.backbone).train().to(device)
    freeze_unused(net)
    ddp = DistributedDataParallel(net, find_unused_parameters=find_unused)
    opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=1e-5, fused=True)
    g = torch.Generator().manual_seed(dist.get_rank())
    n, s = args.batch, args.size
    x = torch.randn(n, 3, s, s, generator=g).to(device)
    mask = (torch.rand(n, 1, s, s, generator=g) > 0.7).float().to(device)
    edge = (torch.rand(n, 1, (s + 3) // 4, (s + 3) // 4, generator=g) > 0.9).float().to(device)
    label = torch.tensor([i % 2 for i in range(n)], device=device)  # mixed batch
    criterion = MVSSLoss()

    def step() -> None:
        edge_logits, seg = ddp(x)
        loss = criterion(edge_logits, seg, mask, edge, label)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step


def run(argv: list[str]) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet50", choices=BACKBONES)
    p.add_argument("--size", type=at_least(64), default=256)
    p.add_argument("--batch", type=positive_int, default=2, help="per process")
    p.add_argument("--runs", type=positive_int, default=7)
    args = p.parse_args(argv)
    if "WORLD_SIZE" not in os.environ:
        raise UsageError(
            "needs several processes",
            hint="run it under torchrun: torchrun --nproc_per_node 2 -m bench.bench_ddp",
        )
    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    fns = {
        "find_unused_parameters=False": make_step(False, args, device),
        "find_unused_parameters=True": make_step(True, args, device),
    }
    med = interleaved_medians(fns, runs=args.runs)
    if dist.get_rank() == 0:
        off, on = med["find_unused_parameters=False"], med["find_unused_parameters=True"]
        world = dist.get_world_size()
        print(
            f"{world} processes, {args.backbone} {args.size}² batch {args.batch}/process on "
            f"{device.type}: off {off:.3f} s/step, on {on:.3f} s/step → "
            f"{100 * (on / off - 1):+.1f}%"
        )
        write_result(
            "ddp",
            {**vars(args), "world": world, "device": device.type, "off_s": off, "on_s": on},
        )
    dist.destroy_process_group()

    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
