"""Each inference path's maps and metrics on a whole test split, against fp32.

Why: the accuracy bars of a faster path are about what users report, so each path runs
``infer_mvss_calmetrics.py`` on the same list with the same checkpoint, and its written
8-bit maps are compared with the fp32 run's (mean and max |Δ| in 1/255, binary agreement
at the threshold, overall and where fp32's map is clear of it) and its pixel-F1 and image
AUC with fp32's. Times are the script's wall-clock, decoding and writing included (one
run each).
Writes bench/results/split_accuracy_<run folder>_<checkpoint stem>_<list stem>.json.
Usage: python -m bench.path_accuracy --model_path CK --test_file LIST [--resize 512]
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

import infer_mvss_calmetrics
from bench.shared import write_result
from common.accel.int8_cache import CLEAR_MARGIN_255
from common.core.user_errors import Parser, at_least, positive_int, require_file, run_cli

PATHS = {
    "fp32": [],
    "fast bf16 + winograd": ["--fast", "--amp", "bf16", "--channels-last", "--winograd"],
    "fast bf16 + winograd F(4x4)": [
        "--fast",
        "--amp",
        "bf16",
        "--channels-last",
        "--winograd",
        "4",
    ],
    # forced (--int8-min-gain 0): on a CPU where int8 does not pay, --int8 runs the fast path
    "int8": ["--int8", "--int8-min-gain", "0"],
    "int8 + winograd F(4x4)": ["--int8", "--int8-min-gain", "0", "--winograd", "4"],
}


def clear_agreement(ref: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """Binary agreement at 127 over the pixels where ``ref`` (8-bit) is more than
    ``CLEAR_MARGIN_255`` levels from the threshold, and the share of such pixels."""
    clear = (ref <= 127 - CLEAR_MARGIN_255) | (ref >= 128 + CLEAR_MARGIN_255)
    same = (got > 127) == (ref > 127)
    return float(same[clear].mean()) if clear.any() else 1.0, float(clear.mean())


def _maps(folder: Path) -> dict[str, np.ndarray]:
    return {p.name: cv2.imread(str(p), cv2.IMREAD_GRAYSCALE) for p in sorted(folder.glob("*.png"))}


def run(argv: list[str]) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--model_path", required=True)
    p.add_argument("--test_file", required=True)
    p.add_argument("--resize", type=at_least(64), default=512)
    p.add_argument("--batch-size", dest="batch_size", type=positive_int, default=8)
    p.add_argument("--paths", nargs="+", choices=list(PATHS), default=list(PATHS))
    args = p.parse_args(argv)
    require_file(args.model_path, "checkpoint", "--model_path")
    model = Path(args.model_path).resolve()
    run_name = model.parent.parent.name if model.parent.name == "checkpoints" else model.parent.name
    stem = f"{run_name}_{model.stem}_{Path(args.test_file).stem}"
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        maps: dict[str, dict[str, np.ndarray]] = {}
        for name in ["fp32", *[n for n in args.paths if n != "fp32"]]:
            out = Path(tmp) / name.replace(" ", "_")
            start = time.perf_counter()
            code = infer_mvss_calmetrics.main(
                [
                    "--model_path",
                    args.model_path,
                    "--test_file",
                    args.test_file,
                    "--save_dir",
                    str(out),
                    "--resize",
                    str(args.resize),
                    "--batch-size",
                    str(args.batch_size),
                    *PATHS[name],
                ]
            )
            seconds = time.perf_counter() - start
            if code not in (0, 1):
                return code
            run_dir = next(out.glob("*/*/summary.json")).parent
            summary = json.loads((run_dir / "summary.json").read_text())
            maps[name] = _maps(run_dir / "pred")
            results[name] = {
                "seconds": seconds,
                "pixel_f1": summary["pixel_f1"],
                "image_auc": summary["image_auc"],
            }
        ref = maps["fp32"]
        ref_all = np.concatenate([ref[k].ravel() for k in ref])
        for name, got in maps.items():
            got_all = np.concatenate([got[k].ravel() for k in ref])
            diff = np.abs(got_all.astype(np.int16) - ref_all)
            agree = (got_all > 127) == (ref_all > 127)
            clear, clear_share = clear_agreement(ref_all, got_all)
            results[name].update(
                clear_agreement=clear,
                clear_pixels=clear_share,
                mean_abs_255=float(diff.mean()),
                max_abs_255=int(diff.max()),
                binary_agreement=float(agree.mean()),
                d_pixel_f1=results[name]["pixel_f1"] - results["fp32"]["pixel_f1"],
                d_image_auc=results[name]["image_auc"] - results["fp32"]["image_auc"],
                images=len(ref),
            )
    width = max(len(name) for name in results)
    print(
        f"{'path':{width}s} {'s':>7s} {'mean/255':>8s} {'max/255':>7s} {'agree %':>8s} "
        f"{'clear %':>8s} {'pixel-F1':>8s} {'ΔF1':>7s} {'AUC':>6s} {'ΔAUC':>7s}"
    )
    for name, r in results.items():
        print(
            f"{name:{width}s} {r['seconds']:7.1f} {r['mean_abs_255']:8.3f} {r['max_abs_255']:7d} "
            f"{100 * r['binary_agreement']:8.3f} {100 * r['clear_agreement']:8.3f} "
            f"{r['pixel_f1']:8.4f} {r['d_pixel_f1']:+7.4f} "
            f"{r['image_auc']:6.4f} {r['d_image_auc']:+7.4f}"
        )
    write_result(
        f"split_accuracy_{stem}",
        {
            "model": args.model_path,
            "test_file": args.test_file,
            "resize": args.resize,
            "paths": results,
        },
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
