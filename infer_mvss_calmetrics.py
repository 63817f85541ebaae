"""Predict manipulation maps for a list/folder of images and compute the metric suite.

Drop-in for the release's script: --model_path, --test_file, --save_dir, --resize, --th
(dashed spellings work too). With --pred-dir, evaluates maps already on disk instead.
Exit code: 0 when every image was processed, 3 when some failed (listed in the CSV).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.cli import (
    add_io_args,
    add_model_args,
    add_run_args,
    eval_settings,
    load_inputs,
    load_model,
    run_options,
)
from common.evaluation import (
    output_dir,
    run_model_evaluation,
    run_pred_dir_evaluation,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_io_args(parser, desensitised="positive")
    add_model_args(parser)
    add_run_args(parser)
    parser.add_argument(
        "--th", type=float, default=0.5, help="pixel threshold (default 0.5, p > th)"
    )
    parser.add_argument("--overlay", action="store_true", help="also write map-over-image overlays")
    parser.add_argument(
        "--pred-dir",
        "--pred_dir",
        dest="pred_dir",
        help="evaluate the maps in this folder (<stem>.png) instead of running a model",
    )
    args = parser.parse_args(argv)
    if not args.test_file:
        parser.error("--test_file is required")
    if not args.pred_dir and not args.model_path:
        parser.error("--model_path is required (or --pred-dir to evaluate existing maps)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    source, records, problems = load_inputs(args)
    settings = eval_settings(args)
    if args.pred_dir:
        pred_dir = Path(args.pred_dir)
        out = output_dir(args.save_dir, args.test_file, f"eval_{pred_dir.name}")
        return run_pred_dir_evaluation(records, problems, pred_dir, out, settings)
    opts = run_options(args)
    model = load_model(args, opts.device)
    out = output_dir(args.save_dir, args.test_file, Path(args.model_path).stem)
    print(f"{len(records)} images from {source}; writing to {out}")
    return run_model_evaluation(model, records, problems, out, opts, settings)


if __name__ == "__main__":
    sys.exit(main())
