"""Three-class inference (pristine / tampered / desensitised) on merged crops, with metrics.

Crops of --tile (512) at --tile-stride (256) are predicted and their softmax maps averaged
(the seed's method); writes class probability maps, index and colour maps, the merged
"manipulated" map, a per-image CSV and summary.json. Exit code 3 when some images failed,
2 for a user error (one line on stderr; --debug shows its traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.core.user_errors import Parser, run_cli
from common.evaluation.arguments import (
    add_io_args,
    add_threshold_arg,
    check_outputs,
    checked_output_dir,
    eval_settings,
    load_inputs,
)
from common.evaluation.three_class import run_three_class_evaluation
from common.inference.arguments import (
    add_model_args,
    add_run_args,
    load_model,
    model_spec,
    run_options,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(description=__doc__.splitlines()[0])
    add_io_args(parser, default_resize="none", empty_f1="seed")
    add_model_args(parser, nclass=3)
    add_run_args(parser, tile=512, stride=256)
    add_threshold_arg(parser, "threshold in (0, 1) of the merged map (default 0.5)")
    args = parser.parse_args(argv)
    if not args.test_file or not args.model_path:
        parser.error("--test_file and --model_path are required")
    return args


def run(argv: list[str]) -> int:
    args = parse_args(argv)
    check_outputs(args)
    source, records, problems = load_inputs(args)
    settings = eval_settings(args, nclass=3)
    out = checked_output_dir(args, Path(args.model_path).stem)
    spec = model_spec(args)
    opts = run_options(args, spec, blend="average")
    model = load_model(args, spec, opts.device, task="three_class")
    print(f"{len(records)} images from {source}; writing to {out}")
    return run_three_class_evaluation(model, records, problems, out, opts, settings)


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
