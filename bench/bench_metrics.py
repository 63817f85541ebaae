"""Metric evaluation of many maps: our streaming evaluator vs a per-image numpy loop.

The reference loops over images the way the release's evaluation does (numpy F1 and IoU
per image, scikit-learn's ROC AUC per image for the pixel AUC) and must give the same
numbers. Writes bench/results/metrics.json.
"""

from __future__ import annotations

import sys
import time

import numpy as np
from sklearn.metrics import roc_auc_score

from bench.common_bench import write_result
from common.metrics import LocalizationEvaluator
from common.usage import Parser, at_least, positive_int, run_cli


def make_data(n: int, size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """8-bit maps (as read back from PNGs) correlated with random rectangular masks."""
    rng = np.random.default_rng(seed)
    masks = np.zeros((n, size, size), np.uint8)
    for i in range(n):
        y, x = rng.integers(0, size // 2, 2)
        h, w = rng.integers(size // 8, size // 2, 2)
        masks[i, y : y + h, x : x + w] = 1
    noise = rng.integers(0, 160, (n, size, size), dtype=np.uint8)
    maps = np.minimum(noise + masks * 96, 255).astype(np.uint8)
    return maps, masks


def reference(maps: np.ndarray, masks: np.ndarray) -> dict[str, float]:
    f1s, ious, aucs = [], [], []
    for m8, g in zip(maps, masks, strict=True):
        p = m8.astype(np.float64) / 255.0
        pred, gt = p > 0.5, g > 0
        tp = np.logical_and(pred, gt).sum()
        fp = np.logical_and(pred, ~gt).sum()
        fn = np.logical_and(~pred, gt).sum()
        f1s.append(2 * tp / (2 * tp + fp + fn) if 2 * tp + fp + fn else 1.0)
        ious.append(tp / (tp + fp + fn) if tp + fp + fn else 1.0)
        aucs.append(roc_auc_score(gt.ravel(), p.ravel()))
    return {
        "pixel_f1": float(np.mean(f1s)),
        "pixel_iou": float(np.mean(ious)),
        "pixel_auc": float(np.mean(aucs)),
    }


def ours(maps: np.ndarray, masks: np.ndarray, batch: int) -> dict[str, float]:
    import torch

    ev = LocalizationEvaluator()
    labels = np.ones(batch, np.int64)
    for i in range(0, len(maps), batch):
        probs = torch.from_numpy(maps[i : i + batch]).float() / 255.0
        ev.update(probs, torch.from_numpy(masks[i : i + batch]), labels[: len(probs)])
    r = ev.compute()
    return {k: r[k] for k in ("pixel_f1", "pixel_iou", "pixel_auc")}


def run(argv: list[str]) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=positive_int, default=1000)
    p.add_argument("--size", type=at_least(64), default=512)
    p.add_argument("--runs", type=positive_int, default=5)
    p.add_argument("--batch", type=positive_int, default=50)
    args = p.parse_args(argv)
    maps, masks = make_data(args.n, args.size)
    ref_t, our_t = [], []
    ref = got = {}
    for _ in range(args.runs):  # interleaved
        start = time.perf_counter()
        ref = reference(maps, masks)
        ref_t.append(time.perf_counter() - start)
        start = time.perf_counter()
        got = ours(maps, masks, args.batch)
        our_t.append(time.perf_counter() - start)
    r, o = float(np.median(ref_t)), float(np.median(our_t))
    same = {k: abs(ref[k] - got[k]) for k in ref}
    print(
        f"{args.n} maps of {args.size}²: per-image numpy loop {r:.2f} s, ours {o:.2f} s "
        f"→ {r / o:.1f}× (median of {args.runs}, interleaved)"
    )
    print("max |difference| per metric:", {k: f"{v:.2e}" for k, v in same.items()})
    write_result(
        "metrics",
        {
            "reference_s": r,
            "ours_s": o,
            "speedup": r / o,
            "reference": ref,
            "ours": got,
            "abs_diff": same,
            "n": args.n,
            "size": args.size,
        },
    )

    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
