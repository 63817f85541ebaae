"""End-to-end folder inference vs the model alone, at the same settings.

64 synthetic JPEGs of 1024×768 are decoded, resized to 512, run through the model, and
their maps resized back and written as PNGs with a CSV, by the same pipeline
infer_mvss_calmetrics.py uses; the model-only rate runs the same model on pre-resized
inputs. The target: end-to-end images/s ≥ 90 % of the model-only rate.
Writes bench/results/e2e.json.
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
from common.evaluation import run_model_evaluation
from common.fast import optimize_for_inference
from common.inference import RunOptions, forward_probs
from common.sources import scan_images
from common.usage import Parser, non_negative_int, positive_int, run_cli


def run(argv: list[str]) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=positive_int, default=64)
    p.add_argument("--batch", type=positive_int, default=4)
    p.add_argument("--workers", type=non_negative_int, default=2)
    p.add_argument("--fast", action="store_true", help="bf16 fast path (else fp32 eager)")
    args = p.parse_args(argv)
    base = calibrated_model()
    model = optimize_for_inference(base, torch.bfloat16, True) if args.fast else base
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
        run_model_evaluation(model, records, [], Path(tmp) / "out", opts, settings)
        e2e_rate = args.n / (time.perf_counter() - start)
    ratio = e2e_rate / model_rate
    print(
        f"model only {model_rate:.3f} img/s, end to end {e2e_rate:.3f} img/s → {100 * ratio:.1f} %"
    )
    write_result(
        "e2e",
        {
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
