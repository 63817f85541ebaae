"""The input, output and scoring options of the evaluating commands (the three inference
scripts and the benchmark), and what they turn into: the records to run, the output
folder, the evaluation settings. Option names follow the release's, with dashed
spellings as equals."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from common.core.release import RELEASE_SIZE
from common.core.user_errors import (
    UsageError,
    non_negative_int,
    open_unit_interval,
    require_dir,
    require_writable_dir,
)
from common.data.masks import (
    DEFAULT_EDGE_THICKNESS,
    DEFAULT_MASK_THRESHOLD,
    DESENSITISED_POLICIES,
    MASK_SIZE_POLICIES,
    MaskOptions,
)
from common.data.sources import (
    Problem,
    Record,
    decode_record,
    load_usable,
    require_one_readable,
)
from common.evaluation.batch_run import EvalSettings, output_dir
from common.evaluation.localization import count_maps_found
from common.inference.arguments import parse_resize

log = logging.getLogger("mvss")


def mask_threshold(text: str) -> int:
    """Grey masks: pixel > this is manipulated, 0..254."""
    value = non_negative_int(text)
    if value > 254:
        raise argparse.ArgumentTypeError(f"must be in 0..254, got {text}")
    return value


def add_threshold_arg(parser: argparse.ArgumentParser, help_text: str) -> None:
    parser.add_argument("--th", type=open_unit_interval, default=0.5, help=help_text)


def add_io_args(
    parser: argparse.ArgumentParser,
    default_resize: str = str(RELEASE_SIZE),
    desensitised: str | None = None,
    empty_f1: str = "release",
    sources: bool = True,
    save_dir: str = "outputs",
) -> None:
    """The shared input/output options; ``desensitised`` (binary tasks) adds
    ``--desensitised`` with that default; ``empty_f1`` is ``--empty-f1``'s default;
    ``sources=False`` leaves out ``--test_file`` and ``--skip-existing`` (the benchmark
    names its sets, and always reuses its maps)."""
    g = parser.add_argument_group("inputs and outputs")
    if sources:
        g.add_argument(
            "--test_file",
            "--test-file",
            dest="test_file",
            nargs="+",
            help="list file (image mask label), JSON list, folder (images/ + masks/ or "
            "plain), image paths or globs",
        )
    g.add_argument(
        "--save_dir",
        "--save-dir",
        dest="save_dir",
        default=save_dir,
        help=f"output root (default: {save_dir})",
    )
    g.add_argument(
        "--resize",
        type=parse_resize,
        default=parse_resize(default_resize),
        help=f"network input size, or 'none': full resolution in tiles (default {default_resize})",
    )
    if sources:
        g.add_argument(
            "--skip-existing",
            "--skip_existing",
            dest="skip_existing",
            action="store_true",
            help="reuse maps already in the output folder (resume an interrupted run)",
        )
    g.add_argument(
        "--mask-threshold",
        "--mask_threshold",
        dest="mask_threshold",
        type=mask_threshold,
        default=DEFAULT_MASK_THRESHOLD,
        help="binary masks: pixel > this is tampered (default 127; 0 = the release)",
    )
    g.add_argument(
        "--mask-size-policy",
        dest="mask_size_policy",
        choices=MASK_SIZE_POLICIES,
        default="resize",
        help="a mask whose size differs from its image",
    )
    if desensitised is not None:
        g.add_argument(
            "--desensitised",
            choices=DESENSITISED_POLICIES,
            default=desensitised,
            help="desensitised regions (class 2 of three-class masks): positive = "
            "manipulated, negative = pristine, ignore = left out of the metrics "
            f"(default {desensitised}; see docs/data-formats.md)",
        )
    g.add_argument(
        "--empty-f1",
        dest="empty_f1",
        choices=("release", "seed"),
        default=empty_f1,
        help="F1 of an empty prediction on an empty mask: 1 (release) or 0 (seed); "
        f"default {empty_f1}",
    )


def mask_options(args: argparse.Namespace, nclass: int = 1) -> MaskOptions:
    return MaskOptions(
        nclass=nclass,
        threshold=args.mask_threshold,
        edge_thickness=DEFAULT_EDGE_THICKNESS,
        size_policy=args.mask_size_policy,
        desensitised=getattr(args, "desensitised", "positive"),
    )


def load_inputs(args: argparse.Namespace) -> tuple[str | list[str], list[Record], list[Problem]]:
    """The ``--test_file`` source (one path, or several paths/globs) and its records.

    A path that does not exist (and matches nothing as a glob), and a source without a
    single usable image, are :class:`UsageError`; single bad rows are problems, recorded
    in the CSV as failures while the others run."""
    if not args.test_file:
        raise UsageError("no inputs given", "--test_file")
    source = args.test_file if len(args.test_file) > 1 else args.test_file[0]
    records, problems = load_usable(source, f"--test_file {source}")
    if not getattr(args, "pred_dir", None):  # scoring saved maps reads no image
        require_one_readable(records, f"--test_file {source}", lambda i: decode_record(records[i]))
    return source, records, problems


def check_outputs(args: argparse.Namespace) -> None:
    """``--save_dir`` (and ``--pred-dir`` when given) fit before any work starts."""
    require_writable_dir(args.save_dir, "--save_dir")
    if getattr(args, "pred_dir", None):
        require_dir(args.pred_dir, "map folder", "--pred-dir")


def checked_output_dir(args: argparse.Namespace, model_name: str) -> Path:
    """The run's output folder (``<save_dir>/<list name>/<model name>``), checked
    writable before any work (a file in its place is a user error)."""
    out = output_dir(args.save_dir, args.test_file, model_name)
    require_writable_dir(out, "--save_dir")
    return out


def require_maps(records: list[Record], pred_dir: str) -> None:
    """``--pred-dir`` holds a map of at least one listed image."""
    if count_maps_found(records, Path(pred_dir)) == 0:
        raise UsageError(
            f"no map of any of the {len(records)} listed images",
            f"--pred-dir {pred_dir}",
            "maps are found as <stem>.png (or .jpg/.tif/.bmp), the name the writer gives",
        )


def eval_settings(args: argparse.Namespace, nclass: int = 1) -> EvalSettings:
    """EvalSettings from the shared inference options."""
    return EvalSettings(
        threshold=args.th,
        resize=args.resize,
        batch_size=args.batch_size,
        workers=args.workers,
        skip_existing=getattr(args, "skip_existing", True),
        save_overlay=getattr(args, "overlay", False),
        empty_f1=args.empty_f1,
        masks=mask_options(args, nclass=nclass),
    )
