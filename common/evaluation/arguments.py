"""The input, output and scoring options of the evaluating commands (the three inference
scripts and the benchmark), and what they turn into: the records to run, the output
folder, the evaluation settings. Option names follow the release's, with dashed
spellings as equals."""

from __future__ import annotations

import argparse
import logging
import shutil
import sys
from pathlib import Path
from typing import Any

from common.accel.fast_path import WINOGRAD_TILE
from common.core.checkpoint import checkpoint_digest
from common.core.release import RELEASE_SIZE
from common.core.runtime import resolve_device
from common.core.user_errors import (
    UsageError,
    non_negative_int,
    open_unit_interval,
    require_dir,
    require_writable_dir,
)
from common.data.masks import (
    DEFAULT_EDGE_THICKNESS,
    DESENSITISED_POLICIES,
    EVALUATION_MASK_SIZE_POLICIES,
    IMAGE_LEVEL_ONLY,
    MASK_SIZE_POLICIES,
    RELEASE_MASK_THRESHOLD,
    MaskOptions,
)
from common.data.sources import (
    Problem,
    Record,
    decode_record,
    load_usable,
    require_one_readable,
)
from common.evaluation.batch_run import EvalSettings, output_dir, stamp_problem, write_stamp
from common.evaluation.localization import count_maps_found
from common.evaluation.thresholds import (
    DEFAULT_THRESHOLD,
    Thresholds,
    read_thresholds,
    stored_thresholds,
)
from common.inference.arguments import parse_resize
from common.inference.settings import ModelSpec, describe_checkpoint, run_score_rule
from common.inference.single_image import tile_blend

log = logging.getLogger("mvss")


def mask_threshold(text: str) -> int:
    """Grey masks: pixel > this is manipulated, 0..254."""
    value = non_negative_int(text)
    if value > 254:
        raise argparse.ArgumentTypeError(f"must be in 0..254, got {text}")
    return value


def add_threshold_args(
    parser: argparse.ArgumentParser, pixel_help: str | None, image_help: str
) -> None:
    """``--th`` (pixels; ``pixel_help=None``: a classifier, whose ``--th`` is its image
    threshold, the derivative scripts' name), ``--image-th``, and ``--thresholds FILE``
    with the thresholds and calibration chosen on a validation set. Unset thresholds
    come from the file, else from the checkpoint (a training run stores its own), else
    the release's 0.5."""
    g = parser.add_argument_group("thresholds")
    where = "default: --thresholds, else the checkpoint's own, else 0.5"
    if pixel_help is not None:
        g.add_argument(
            "--th", type=open_unit_interval, default=None, help=f"{pixel_help} ({where})"
        )
        image_names: tuple[str, ...] = ("--image-th", "--image_th")
    else:
        image_names = ("--th", "--image-th", "--image_th")
    g.add_argument(
        *image_names,
        dest="image_th",
        type=open_unit_interval,
        default=None,
        help=f"{image_help} ({where})",
    )
    g.add_argument(
        "--thresholds",
        metavar="FILE",
        default=None,
        help="thresholds and image-score calibration chosen on a validation set (written "
        "by --write-thresholds, benchmark.py --th-from, or stored by training)",
    )
    g.add_argument(
        "--force-thresholds",
        dest="force_thresholds",
        action="store_true",
        help="use a thresholds file chosen for another checkpoint",
    )


def add_write_thresholds_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--write-thresholds",
        "--write_thresholds",
        dest="write_thresholds",
        metavar="FILE",
        default=None,
        help="after the run, choose thresholds (best pixel-F1 and image F1) and fit the "
        "image-score calibration on this labelled list, and write them to FILE (JSON) "
        "for --thresholds",
    )


def resolve_thresholds(
    args: argparse.Namespace, checkpoint: str | Path | None, task: str
) -> Thresholds:
    """Command line first, then ``--thresholds`` (refused when chosen for another
    checkpoint or task, unless ``--force-thresholds``), then the checkpoint's own."""
    chosen, origin, unused = None, "", ""
    rule = run_score_rule(checkpoint, task, getattr(args, "desensitised", None))  # this run's
    if args.thresholds:
        chosen = read_thresholds(args.thresholds)
        where = f"--thresholds {args.thresholds}"
        if (chosen.task == "classification") != (task == "classification"):
            raise UsageError(f"chosen for a {chosen.task} model, this is {task}", where)
        # a missing checkpoint is the loader's error to give, in its own words
        digest = (
            checkpoint_digest(checkpoint) if checkpoint and Path(checkpoint).is_file() else None
        )
        other = bool(chosen.checkpoint_sha256 and digest and chosen.checkpoint_sha256 != digest)
        if other and not getattr(args, "force_thresholds", False):
            raise UsageError(
                "chosen for another checkpoint "
                f"(sha256 {chosen.checkpoint_sha256[:12]}…, this one {digest[:12]}…)",
                where,
                "choose them for this one, or --force-thresholds",
            )
        origin = f"{args.thresholds}, {chosen.describe()}"
        if chosen.score != rule:
            raise UsageError(
                f"chosen on scores that are {chosen.score}, this run's are {rule}",
                where,
                "choose them on this run's scores (--write-thresholds)",
            )
    elif checkpoint:
        chosen = stored_thresholds(checkpoint)
        origin = "" if chosen is None else f"the checkpoint's own, {chosen.describe()}"
        if chosen is not None and (chosen.task == "classification") != (task == "classification"):
            # a classifier's image scores are not map maxima (nor the other way round):
            # its stored thresholds and calibration mean nothing here, as a file's would not
            unused = f"the checkpoint's own were chosen for a {chosen.task} model: not used"
            chosen = None
        if chosen is not None and chosen.score != rule:
            # e.g. a three-class model's, chosen on 1 − P(pristine), in a run that scores
            # P(tampered) (--desensitised negative): the same number means another thing
            unused = (
                f"the checkpoint's own were chosen on {chosen.score}, this run scores "
                f"{rule}: not used"
            )
            chosen = None
    origins: dict[str, list[str]] = {}  # where from → which thresholds

    def pick(given: float | None, stored: float | None, name: str) -> float:
        if given is not None:
            origins.setdefault("the command line", []).append(name)
            return given
        if stored is not None:
            origins.setdefault(origin, []).append(name)
            return stored
        origins.setdefault("the release's default 0.5", []).append(name)
        return DEFAULT_THRESHOLD

    given_image = args.image_th
    if task == "classification" and given_image is None:
        given_image = getattr(args, "th", None)  # a classifier's --th is its image threshold
    pixel = DEFAULT_THRESHOLD
    if task != "classification":
        pixel = pick(getattr(args, "th", None), chosen and chosen.pixel, "pixel")
    image = pick(given_image, chosen and chosen.image, "image")
    many = len(origins) > 1
    source = "; ".join(
        f"{' and '.join(names)} from {where}" if many else f"from {where}"
        for where, names in origins.items()
    )
    if unused:
        source = f"{source}; {unused}"
    return Thresholds(
        pixel=pixel,
        image=image,
        calibration=chosen.calibration if chosen else None,
        source=source,
    )


class _NothingToResume(argparse.Action):
    """``--skip-existing`` where a script keeps nothing between runs to resume from: it
    says so in one line and scores every image again (ignoring it silently looked like a
    resume; refusing it would break pipelines whose results were right)."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(
            f"warning: {option_string}: {parser.prog} keeps nothing between runs to resume "
            "from (class probabilities, crop scores); every image is scored again "
            "(benchmark.py keeps a finished set's maps or scores)",
            file=sys.stderr,
        )
        namespace.skip_existing = False


def add_io_args(
    parser: argparse.ArgumentParser,
    default_resize: str = str(RELEASE_SIZE),
    desensitised: str | None = None,
    empty_f1: str = "release",
    sources: bool = True,
    save_dir: str = "outputs",
    mask_rule: int = RELEASE_MASK_THRESHOLD,
    mask_size: str = IMAGE_LEVEL_ONLY,
    resumable: bool = True,
) -> None:
    """The shared input/output options; ``mask_rule`` is ``--mask-threshold``'s default
    (the release's ``> 0`` for binary localisation); ``mask_size`` is
    ``--mask-size-policy``'s (``image-level``, the release's rule, where the task can
    score an image at the image level alone); ``desensitised`` (binary tasks) adds
    ``--desensitised`` with that default; ``empty_f1`` is ``--empty-f1``'s default;
    ``sources=False`` leaves out ``--test_file`` and ``--skip-existing`` (the benchmark
    names its sets, and always reuses its maps); ``resumable=False`` (scripts that keep
    nothing to resume from) hides ``--skip-existing`` and warns in one line where it is
    given, instead of ignoring it."""
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
        "--data-root",
        "--data_root",
        dest="data_root",
        default=None,
        metavar="DIR",
        help="the folder a list's relative paths start from (the release's lists name "
        "paths from a dataset root, e.g. ./COVER/tampered/95t.tif); absolute paths are "
        "kept; default: beside the list"
        + ("; a set of --sets-file may name its own root" if not sources else ""),
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
    if sources and resumable:
        g.add_argument(
            "--skip-existing",
            "--skip_existing",
            dest="skip_existing",
            action="store_true",
            help="reuse maps already in the output folder (resume an interrupted run)",
        )
    elif sources:
        g.add_argument(
            "--skip-existing",
            "--skip_existing",
            dest="skip_existing",
            nargs=0,
            action=_NothingToResume,
            default=False,
            help=argparse.SUPPRESS,
        )
    g.add_argument(
        "--mask-threshold",
        "--mask_threshold",
        dest="mask_threshold",
        type=mask_threshold,
        default=mask_rule,
        help=f"grey masks: pixel > this is tampered (default {mask_rule}; 0: the release's "
        "evaluation, any non-zero pixel; 127: the middle grey, as training reads masks)",
    )
    image_level = mask_size == IMAGE_LEVEL_ONLY
    g.add_argument(
        "--mask-size-policy",
        "--mask_size_policy",
        dest="mask_size_policy",
        choices=EVALUATION_MASK_SIZE_POLICIES if image_level else MASK_SIZE_POLICIES,
        default=mask_size,
        help="a mask whose size differs from its image: "
        + (
            "image-level = the image counts for the image level only (the release's rule), "
            if image_level
            else ""
        )
        + f"resize = resized (nearest) and scored, reject = the row fails; default {mask_size}; "
        "each such mask is a warning in summary.json",
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
    records, problems = load_usable(source, f"--test_file {source}", root=args.data_root)
    if not getattr(args, "pred_dir", None):  # scoring saved maps reads no image
        require_one_readable(records, f"--test_file {source}", lambda i: decode_record(records[i]))
    return source, records, problems


def check_outputs(args: argparse.Namespace) -> None:
    """``--save_dir`` (and ``--pred-dir`` when given) fit before any work starts."""
    require_writable_dir(args.save_dir, "--save_dir")
    written = getattr(args, "write_thresholds", None)
    if written:  # known before the run, not after it
        if Path(written).is_dir():
            raise UsageError(
                "is a folder; name the JSON file to write", f"--write-thresholds {written}"
            )
        require_writable_dir(Path(written).parent, "--write-thresholds")
    if getattr(args, "pred_dir", None):
        require_dir(args.pred_dir, "map folder", "--pred-dir")


def maps_stamp(args: argparse.Namespace, spec: ModelSpec) -> dict[str, Any]:
    """What decides a run's maps: the checkpoint, input size and tiling, precision and
    fast path, int8 and its calibration; for a three-class model, the tile blend and the
    map scored under the desensitised policy. The benchmark adds its own keys."""
    stamp: dict[str, Any] = {
        "checkpoint_sha256": checkpoint_digest(args.model_path),
        "resize": args.resize,
        "tile": args.tile,
        "tile_stride": args.tile_stride,
        "amp": spec.amp,
        "fast": spec.fast,
        "winograd": spec.winograd or 0,
        "channels_last": spec.channels_last,
        "int8": spec.int8,
    }
    if spec.int8:  # its scales come from these images; where it pays, from the CPU
        stamp.update(
            int8_calibration=spec.int8_calibration,
            int8_images=spec.int8_images,
            int8_min_gain=spec.int8_min_gain,
        )
        if spec.winograd != WINOGRAD_TILE:  # before 2026-12-04 int8 ran F(2×2) whatever
            stamp["int8_head"] = f"winograd F({spec.winograd}x{spec.winograd})"
    if spec.amp == "off" and resolve_device(args.device).type == "cuda":
        stamp["gpu_fp32"] = "TF32 off"  # made before, with TF32 on, they differ
    if describe_checkpoint(args.model_path).nclass == 3:
        # three-class maps: tiles averaged, and the map scored follows the policy
        stamp.update(tile_blend=tile_blend(3), desensitised=getattr(args, "desensitised", None))
    return stamp


def prepare_map_reuse(out: Path, stamp: dict[str, Any], skip_existing: bool) -> None:
    """Maps in ``out`` are reused (``--skip-existing``) only when this run would make them
    the same way (a ``best.pt`` of another run writes to the same folder); a run that
    computes them again first removes maps made otherwise, so that a later resume cannot
    mix them in."""
    pred = out / "pred"
    has_maps = pred.is_dir() and any(pred.iterdir())
    problem = stamp_problem(out, stamp) if has_maps else None
    if problem and skip_existing:
        raise UsageError(
            f"the maps in {pred} were made otherwise ({problem})",
            "--skip-existing",
            "drop it to compute them again, or use another --save_dir",
        )
    if problem:
        for folder in ("pred", "bin", "overlay"):
            shutil.rmtree(out / folder, ignore_errors=True)
        log.warning("maps in %s were made otherwise (%s): removed, computed again", pred, problem)
    write_stamp(out, stamp)


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


def eval_settings(
    args: argparse.Namespace, thresholds: Thresholds, nclass: int = 1
) -> EvalSettings:
    """EvalSettings from the shared inference options and the resolved thresholds."""
    return EvalSettings(
        threshold=thresholds.pixel,
        image_threshold=thresholds.image,
        resize=args.resize,
        batch_size=args.batch_size,
        workers=args.workers,
        skip_existing=getattr(args, "skip_existing", True),
        save_overlay=getattr(args, "overlay", False),
        empty_f1=args.empty_f1,
        masks=mask_options(args, nclass=nclass),
    )
