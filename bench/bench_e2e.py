"""End-to-end folder inference vs the model alone, at the same settings.

64 synthetic JPEGs of 1024×768 are decoded, resized to 512, run through the model, and
their maps resized back and written as PNGs with a CSV, by the same pipeline
infer_mvss_calmetrics.py uses; the model-only rate runs the same model on pre-resized
inputs. The target: end-to-end images/s ≥ 90 % of the model-only rate. With --perturb
KIND:LEVEL the end-to-end side is one level of benchmark.py instead: the degradation
applied in the data-loading workers, the maps written, then scored from disk.
Writes bench/results/e2e[_<perturb>].json.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import cv2
import torch

from bench.common_bench import calibrated_model, synthetic_images, write_result
from common.batch_run import EvalSettings
from common.benchmark import LoadedSet, run_localization_level
from common.evaluation import run_model_evaluation
from common.fast import optimize_for_inference
from common.inference import RunOptions, forward_probs
from common.perturb import parse_sweep
from common.sources import scan_images
from common.usage import Parser, UsageError, non_negative_int, positive_int, run_cli


def run(argv: list[str]) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=positive_int, default=64)
    p.add_argument("--batch", type=positive_int, default=4)
    p.add_argument("--workers", type=non_negative_int, default=2)
    p.add_argument("--fast", action="store_true", help="the fast path (else fp32 eager)")
    p.add_argument(
        "--precision",
        choices=("bf16", "fp32"),
        default="bf16",
        help="fast path weights (bf16 needs AVX-512 BF16/AMX to be fast)",
    )
    p.add_argument("--perturb", help="time benchmark.py's path with this degradation")
    args = p.parse_args(argv)
    try:
        perturb = parse_sweep(args.perturb)[0] if args.perturb else None
    except ValueError as exc:
        raise UsageError(str(exc), "--perturb") from exc
    base = calibrated_model()
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float32
    model = optimize_for_inference(base, dtype, True) if args.fast else base
    opts = RunOptions(amp="off")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "images"
        folder.mkdir()
        for i, img in enumerate(synthetic_images(args.n, 768, seed=5)):
            big = cv2.resize(img, (1024, 768), interpolation=cv2.INTER_LINEAR)
            cv2.imwrite(str(folder / f"{i:03d}.jpg"), big, [cv2.IMWRITE_JPEG_QUALITY, 92])
        records, _ = scan_images([str(folder)])
        inputs = torch.from_numpy(synthetic_images(args.batch, 512, seed=6))
        forward_probs(model, inputs, opts)  # warm-up
        start = time.perf_counter()
        for _ in range(args.n // args.batch):
            forward_probs(model, inputs, opts)
        model_rate = args.n / (time.perf_counter() - start)
        settings = EvalSettings(resize=512, batch_size=args.batch, workers=args.workers)
        start = time.perf_counter()
        if perturb is None:
            run_model_evaluation(model, records, [], Path(tmp) / "out", opts, settings)
        else:  # benchmark.py's level: degraded in the workers, maps written, then scored
            data = LoadedSet("bench", str(folder), records, [])
            run_localization_level(model, data, perturb, Path(tmp) / "out", opts, settings)
        e2e_rate = args.n / (time.perf_counter() - start)
    ratio = e2e_rate / model_rate
    print(
        f"model only {model_rate:.3f} img/s, end to end {e2e_rate:.3f} img/s → {100 * ratio:.1f} %"
    )
    write_result(
        f"e2e_{perturb.name}" if perturb else "e2e",
        {
            "perturb": perturb.name if perturb else None,
            "precision": args.precision,
            "model_img_s": model_rate,
            "e2e_img_s": e2e_rate,
            "ratio": ratio,
            "n": args.n,
            "batch": args.batch,
            "workers": args.workers,
            "fast": args.fast,
        },
    )

    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
