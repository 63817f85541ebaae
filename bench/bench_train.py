"""Training step (forward + backward + Adam) on CPU: fp32 eager vs bf16 autocast +
channels_last, side by side (interleaved, median of --runs after warm-up).

Both paths use the fused Adam the training engine uses; ``--loop-adam`` adds an fp32
path with PyTorch's default per-tensor CPU Adam, to show what fusing the step is worth.
Writes bench/results/train.json."""

from __future__ import annotations

import resource
import sys
import warnings

import torch

from bench.common_bench import int_pair, interleaved_medians, write_result
from common.losses import MVSSLoss
from common.usage import Parser, positive_int, run_cli
from models import BACKBONES, get_mvss


def make_step(size: int, batch: int, bf16: bool, backbone: str, fused: bool = True):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = get_mvss(backbone=backbone).train()
    if bf16:
        net = net.to(memory_format=torch.channels_last)
    params = [p for p in net.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-4, fused=fused)
    x = torch.randn(batch, 3, size, size)
    if bf16:
        x = x.contiguous(memory_format=torch.channels_last)
    e = (size + 3) // 4
    mask = (torch.rand(batch, 1, size, size) > 0.7).float()
    edge = (torch.rand(batch, 1, e, e) > 0.9).float()
    label = torch.ones(batch)
    criterion = MVSSLoss()

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            edge_logits, seg = net(x)
        loss = criterion(edge_logits, seg, mask, edge, label)["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def run(argv: list[str]) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--backbone", default="resnet50", choices=BACKBONES)
    p.add_argument(
        "--configs", nargs="+", type=int_pair, default=["256x2", "256x8", "512x2", "512x8"]
    )
    p.add_argument("--runs", type=positive_int, default=5)
    p.add_argument("--loop-adam", action="store_true", help="also time per-tensor CPU Adam")
    args = p.parse_args(argv)
    rows = []
    for spec in args.configs:
        size, batch = (int(v) for v in spec.split("x"))
        fns = {
            "fp32 eager": make_step(size, batch, False, args.backbone),
            "bf16 autocast + channels_last": make_step(size, batch, True, args.backbone),
        }
        if args.loop_adam:
            fns["fp32 eager, per-tensor Adam"] = make_step(size, batch, False, args.backbone, False)
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


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
