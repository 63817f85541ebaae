"""Predict manipulation maps for a list/folder of images and compute the metric suite.

Drop-in for the release's script: --model_path, --test_file, --save_dir, --resize, --th
(dashed spellings work too). With --pred-dir, evaluates maps already on disk instead.
Exit code: 0 when every image was processed, 3 when some failed (listed in the CSV),
2 for a user error (one line on stderr; --debug shows its traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.core.distributed import SHARE_A_TEST_SET, refuse_several_processes
from common.core.user_errors import Parser, run_cli
from common.data.masks import LOCALIZATION_DESENSITISED
from common.evaluation.arguments import (
    add_io_args,
    add_threshold_args,
    add_write_thresholds_arg,
    check_outputs,
    checked_output_dir,
    eval_settings,
    load_inputs,
    maps_stamp,
    prepare_map_reuse,
    require_maps,
    resolve_thresholds,
)
from common.evaluation.localization import run_model_evaluation, run_pred_dir_evaluation
from common.evaluation.score_report import choose_and_write, finish_evaluation
from common.inference.arguments import (
    add_model_args,
    add_run_args,
    load_model,
    model_spec,
    run_options,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(description=__doc__.splitlines()[0])
    add_io_args(parser, desensitised=LOCALIZATION_DESENSITISED)
    add_model_args(parser)
    add_run_args(parser)
    add_threshold_args(
        parser,
        "pixel threshold in (0, 1), p > th",
        "image threshold in (0, 1) on the image score (the map's maximum), score > th",
    )
    add_write_thresholds_arg(parser)
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


def run(argv: list[str]) -> int:
    refuse_several_processes("infer_mvss_calmetrics.py", SHARE_A_TEST_SET)
    args = parse_args(argv)
    check_outputs(args)
    source, records, problems = load_inputs(args)
    thresholds = resolve_thresholds(args, args.model_path, "localization")
    settings = eval_settings(args, thresholds)
    if args.pred_dir:
        maps = Path(args.pred_dir)
        require_maps(records, args.pred_dir)
        out = checked_output_dir(args, f"eval_{maps.name}")
        print(thresholds.line("localization"))
        code = run_pred_dir_evaluation(records, problems, maps, out, settings)
    else:
        out = checked_output_dir(args, Path(args.model_path).stem)
        spec = model_spec(args)
        opts = run_options(args, spec)
        model = load_model(args, spec, opts.device, task="localization")
        prepare_map_reuse(out, maps_stamp(args, spec), args.skip_existing)  # a good model
        print(f"{len(records)} images from {source}; writing to {out}")
        print(thresholds.line("localization"))
        code = run_model_evaluation(model, records, problems, out, opts, settings)
        maps = out / "pred"
    finish_evaluation(out, thresholds, "localization", records, args.mask_threshold)
    if args.write_thresholds:
        choose_and_write(
            args.write_thresholds,
            "localization",
            out,
            maps,
            records,
            settings.masks,
            settings.empty_f1,
            None if args.pred_dir else args.model_path,
        )
    return code


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
