"""Three-class inference (pristine / tampered / desensitised) on merged crops, with metrics.

Crops of --tile (512) at --tile-stride (256) are predicted and their softmax maps averaged
(the seed's method); writes class probability maps, index and colour maps, the merged
"manipulated" map, a per-image CSV and summary.json. Exit code 3 when some images failed,
2 for a user error (one line on stderr; --debug shows its traceback).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from common.core.distributed import SHARE_A_TEST_SET, refuse_several_processes
from common.core.user_errors import Parser, run_cli
from common.data.masks import DEFAULT_MASK_THRESHOLD
from common.evaluation.arguments import (
    add_io_args,
    add_threshold_args,
    add_write_thresholds_arg,
    check_outputs,
    checked_output_dir,
    eval_settings,
    load_inputs,
    resolve_thresholds,
)
from common.evaluation.score_report import choose_and_write, finish_evaluation
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
    add_io_args(
        parser,
        default_resize="none",
        empty_f1="seed",
        mask_rule=DEFAULT_MASK_THRESHOLD,
        mask_size="resize",  # class maps are scored against the mask: none without it
        resumable=False,  # its metrics need the class probabilities, which are not kept
    )
    add_model_args(parser, nclass=3)
    add_run_args(parser, tile=512, stride=256)
    add_threshold_args(
        parser,
        "pixel threshold in (0, 1) of the merged map, p > th",
        "image threshold in (0, 1) on the merged map's maximum, score > th",
    )
    add_write_thresholds_arg(parser)
    args = parser.parse_args(argv)
    if not args.test_file or not args.model_path:
        parser.error("--test_file and --model_path are required")
    return args


def run(argv: list[str]) -> int:
    refuse_several_processes("infer_3labels_merge_calmetrics.py", SHARE_A_TEST_SET)
    args = parse_args(argv)
    check_outputs(args)
    source, records, problems = load_inputs(args)
    thresholds = resolve_thresholds(args, args.model_path, "three_class")
    settings = eval_settings(args, thresholds, nclass=3)
    out = checked_output_dir(args, Path(args.model_path).stem)
    spec = model_spec(args)
    opts = run_options(args, spec, nclass=3)
    model = load_model(args, spec, opts.device, task="three_class")
    print(f"{len(records)} images from {source}; writing to {out}")
    print(thresholds.line("three_class"))
    code = run_three_class_evaluation(model, records, problems, out, opts, settings)
    finish_evaluation(out, thresholds, "three_class", records, args.mask_threshold)
    if args.write_thresholds:
        binary = replace(settings.masks, nclass=1)  # the merged map: manipulated or not
        choose_and_write(
            args.write_thresholds,
            "three_class",
            out,
            out / "merged",
            records,
            binary,
            settings.empty_f1,
            args.model_path,
        )
    return code


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
