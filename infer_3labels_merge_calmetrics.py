"""Three-class inference (pristine / tampered / desensitised) on merged crops, with metrics.

Crops of --tile (512) at --tile-stride (256) are predicted and their softmax maps averaged
(the seed's method); writes class probability maps, index and colour maps, the merged
"manipulated" map, a per-image CSV and summary.json. Exit code 3 when some images failed.
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
from common.evaluation import output_dir
from common.evaluation_3class import run_three_class_evaluation


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_io_args(parser, default_resize="none", empty_f1="seed")
    add_model_args(parser, nclass=3)
    add_run_args(parser, tile=512, stride=256)
    parser.add_argument("--th", type=float, default=0.5, help="threshold of the merged map")
    args = parser.parse_args(argv)
    if not args.test_file or not args.model_path:
        parser.error("--test_file and --model_path are required")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    source, records, problems = load_inputs(args)
    settings = eval_settings(args, nclass=3)
    opts = run_options(args, blend="average")
    model = load_model(args, opts.device)
    out = output_dir(args.save_dir, args.test_file, Path(args.model_path).stem)
    print(f"{len(records)} images from {source}; writing to {out}")
    return run_three_class_evaluation(model, records, problems, out, opts, settings)


if __name__ == "__main__":
    sys.exit(main())
