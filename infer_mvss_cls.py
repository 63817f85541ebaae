"""Image-level manipulation classification to CSV, with metrics when labels are known.

Images are cut into crops (--crop: by default the size the checkpoint trained on, else
512; --crop-stride: the crop); an image is manipulated when any crop's score exceeds
--th. --crop none scores the whole image (resized with --resize). Writes per_image.csv
and summary.json (AUC, accuracy, precision, recall, F1, MCC, FPR, confusion matrix).
Exit code 3 when some images failed, 2 for a user error (one line on stderr; --debug
shows its traceback).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from common.core.distributed import SHARE_A_TEST_SET, refuse_several_processes
from common.core.user_errors import (
    Parser,
    check_stride,
    check_whole_image_size,
    option_given,
    positive_int,
    run_cli,
)
from common.data.masks import CLASSIFIER_DESENSITISED, DEFAULT_MASK_THRESHOLD
from common.evaluation.arguments import (
    add_io_args,
    add_threshold_args,
    add_write_thresholds_arg,
    check_outputs,
    checked_output_dir,
    load_inputs,
    mask_options,
    resolve_thresholds,
)
from common.evaluation.classification import (
    name_label_base,
    run_classification,
    seed_name_label,
)
from common.evaluation.score_report import choose_and_write, finish_evaluation
from common.inference.arguments import (
    add_model_args,
    add_run_args,
    load_model,
    model_spec,
    parse_resize,
    run_options,
)
from common.inference.crops import DEFAULT_CROP, classifier_crops
from common.inference.settings import describe_checkpoint


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = Parser(description=__doc__.splitlines()[0])
    add_io_args(
        parser,
        desensitised=CLASSIFIER_DESENSITISED,
        mask_rule=DEFAULT_MASK_THRESHOLD,
        resumable=False,  # its scores are not kept between runs
    )
    add_model_args(parser)
    add_run_args(parser)
    parser.add_argument(
        "--crop",
        type=parse_resize,
        default=argparse.SUPPRESS,
        help="crop size, or 'none' for the whole image (default: the crop the checkpoint "
        f"trained on, whose validation chose its threshold; else {DEFAULT_CROP})",
    )
    parser.add_argument(
        "--crop-stride",
        "--crop_stride",
        dest="crop_stride",
        type=positive_int,
        default=argparse.SUPPRESS,
        help="crop stride, at most --crop (default: --crop, crops side by side)",
    )
    add_threshold_args(parser, None, "image threshold in (0, 1), score > th")
    add_write_thresholds_arg(parser)
    parser.add_argument(
        "--label-from-name",
        "--label_from_name",
        dest="label_from_name",
        action="store_true",
        help="the seed's image ground truth: an image whose path contains 'orig' or "
        "'mosaic' is authentic, any other manipulated (replaces the list's labels)",
    )
    parser.add_argument(
        "--head",
        choices=("max", "linear"),
        default=None,
        help="image head (default: from the checkpoint, else max)",
    )
    args = parser.parse_args(argv)
    args.resize_given = option_given(sys.argv[1:] if argv is None else argv, "--resize")
    if not args.test_file or not args.model_path:
        parser.error("--test_file and --model_path are required")
    return args


def run(argv: list[str]) -> int:
    refuse_several_processes("infer_mvss_cls.py", SHARE_A_TEST_SET)
    args = parse_args(argv)
    description = describe_checkpoint(args.model_path)
    crop_source = classifier_crops(args, description.crop, description.resized, args.resize_given)
    check_stride(args.crop_stride, args.crop, "--crop-stride", "--crop")
    check_whole_image_size(args.crop, args.resize)
    check_outputs(args)
    source, records, problems = load_inputs(args)
    if args.label_from_name:
        base = name_label_base(source, args.data_root)
        records = [seed_name_label(r, base) for r in records]
    out = checked_output_dir(args, Path(args.model_path).stem)
    thresholds = resolve_thresholds(args, args.model_path, "classification")
    spec = model_spec(args)
    opts = run_options(args, spec)
    model = load_model(args, spec, opts.device, task="classification")
    print(f"{len(records)} images from {source}; writing to {out}")
    print(thresholds.line("classification"))
    if args.crop is not None:
        print(f"crops: {args.crop} px at stride {args.crop_stride} ({crop_source})")
    else:
        print(f"whole images, resized to {args.resize} ({crop_source})")
    code = run_classification(
        model,
        records,
        problems,
        out,
        opts,
        args.crop,
        args.crop_stride,
        args.resize,
        thresholds.image,
        mask_options(args),
        args.batch_size,
        args.workers,
    )
    finish_evaluation(out, thresholds, "classification", records, args.mask_threshold)
    if args.write_thresholds:
        choose_and_write(
            args.write_thresholds,
            "classification",
            out,
            None,
            records,
            mask_options(args),
            args.empty_f1,
            args.model_path,
        )
    return code


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
