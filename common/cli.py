"""Command-line pieces shared by the scripts (option names follow the release's, with
dashed spellings as equals)."""

from __future__ import annotations

import argparse
import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from common.batch_run import EvalSettings, output_dir
from common.fast import WINOGRAD_TILE, optimize_for_inference
from common.inference import RunOptions
from common.int8_calibration import (
    BUNDLED,
    DEFAULT_CALIBRATION_IMAGES,
    INT8_MIN_GAIN,
    int8_model,
)
from common.masks import (
    DEFAULT_EDGE_THICKNESS,
    DEFAULT_MASK_THRESHOLD,
    DESENSITISED_POLICIES,
    MASK_SIZE_POLICIES,
    MaskOptions,
)
from common.runtime import AMP_MODES, device_of
from common.sources import (
    Problem,
    Record,
    decode_record,
    load_usable,
    require_one_readable,
)
from common.usage import (
    UsageError,
    at_least,
    check_stride,
    clip,
    non_negative_int,
    non_negative_number,
    open_unit_interval,
    positive_int,
    require_dir,
    require_file,
    require_writable_dir,
)
from common.winograd import TILE_SIZES
from models import (
    BACKBONES,
    WeightsError,
    get_mvss,
    get_mvss_cls,
    load_weights,
    read_checkpoint_config,
)

log = logging.getLogger("mvss")


def parse_resize(text: str) -> int | None:
    """``512`` → 512; ``none`` → None (full resolution, tiled)."""
    if text.lower() in ("none", "full", "0"):
        return None
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected an integer or 'none', got {text!r}") from exc
    if value < 64:
        raise argparse.ArgumentTypeError(f"size must be at least 64 (or 'none'), got {value}")
    return value


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
    default_resize: str = "512",
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
            f"(default {desensitised}; see README, Data)",
        )
    g.add_argument(
        "--empty-f1",
        dest="empty_f1",
        choices=("release", "seed"),
        default=empty_f1,
        help="F1 of an empty prediction on an empty mask: 1 (release) or 0 (seed); "
        f"default {empty_f1}",
    )


def add_model_args(parser: argparse.ArgumentParser, nclass: int = 1) -> None:
    g = parser.add_argument_group("model")
    g.add_argument(
        "--model_path",
        "--model-path",
        dest="model_path",
        help="checkpoint: official .pt/.pth, ours, or .safetensors",
    )
    g.add_argument(
        "--backbone",
        choices=BACKBONES,
        default=None,
        help="default: from the checkpoint's config, else resnet50",
    )
    g.add_argument("--nclass", type=int, default=nclass, help=argparse.SUPPRESS)


def add_run_args(parser: argparse.ArgumentParser, tile: int = 512, stride: int = 384) -> None:
    g = parser.add_argument_group("running")
    g.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    g.add_argument("--amp", choices=AMP_MODES, default="off", help="mixed precision (default off)")
    g.add_argument(
        "--channels-last",
        dest="channels_last",
        action="store_true",
        help="channels_last memory format (faster with --amp bf16 on CPU)",
    )
    g.add_argument(
        "--fast",
        action="store_true",
        help="inference fast path: BatchNorm folded, head convolutions merged, "
        "bf16 weights with --amp bf16 (see README, Performance)",
    )
    g.add_argument(
        "--winograd",
        nargs="?",
        type=int,
        choices=TILE_SIZES,
        const=WINOGRAD_TILE,
        default=None,
        metavar="TILE",
        help=f"with --fast: the head's wide 3×3 convolutions by Winograd F(TILE×TILE, 3×3); "
        f"TILE {WINOGRAD_TILE} (the default, 2.25× fewer multiply-adds there) keeps maps "
        "within bf16 rounding, 4 (4× fewer) is faster with larger rounding "
        "(see README, Performance)",
    )
    g.add_argument(
        "--int8",
        action="store_true",
        help="opt-in, x86 CPU: the fast path with the RGB backbone's last two stages in int8 "
        "(implies --fast --amp bf16 --channels-last --winograd); approximate, its cost is "
        "printed (see README, Performance)",
    )
    g.add_argument(
        "--int8-calibration",
        dest="int8_calibration",
        default=BUNDLED,
        metavar="SOURCE",
        help="calibration images for --int8: a list file, folder or glob, or 'bundled' "
        "(synthetic forgeries of the bundled photographs; the default)",
    )
    g.add_argument(
        "--int8-images",
        dest="int8_images",
        type=positive_int,
        default=DEFAULT_CALIBRATION_IMAGES,
        help=f"how many calibration images (default {DEFAULT_CALIBRATION_IMAGES})",
    )
    g.add_argument(
        "--int8-cache",
        dest="int8_cache",
        default=None,
        metavar="FILE",
        help="calibration cache (default: <save_dir>/int8_calibration.pt); reused while "
        "the checkpoint, the images and the size match",
    )
    g.add_argument(
        "--int8-min-gain",
        dest="int8_min_gain",
        type=non_negative_number,
        default=INT8_MIN_GAIN,
        metavar="X",
        help=f"--int8 runs only where it measured at least X times the fast path's speed on "
        f"this CPU (default {INT8_MIN_GAIN}; measured once per CPU kind and kept in the "
        "cache); elsewhere it says so and runs the fast path. 0: always int8",
    )
    g.add_argument("--batch-size", "--batch_size", dest="batch_size", type=positive_int, default=4)
    g.add_argument(
        "--workers",
        type=non_negative_int,
        default=2,
        help="decoding worker processes (default 2)",
    )
    g.add_argument(
        "--tile",
        type=at_least(64),
        default=tile,
        help=f"tile size for --resize none (default {tile})",
    )
    g.add_argument(
        "--tile-stride",
        dest="tile_stride",
        type=positive_int,
        default=stride,
        help=f"tile stride (default {stride})",
    )


def apply_int8(args: argparse.Namespace) -> None:
    """``--int8`` is the fastest path plus int8 backbones: switch its parts on, on CPU."""
    if not getattr(args, "int8", False):
        return
    if not str(args.device).startswith(("cpu", "auto")):
        raise UsageError("the int8 path runs on x86 CPUs only", f"--device {args.device}")
    if args.amp not in ("off", "bf16"):
        raise UsageError("the int8 path computes its other layers in bf16", f"--amp {args.amp}")
    args.device, args.amp, args.fast, args.channels_last = "cpu", "bf16", True, True
    args.winograd = getattr(args, "winograd", None) or WINOGRAD_TILE


def run_options(args: argparse.Namespace, blend: str = "weighted") -> RunOptions:
    apply_int8(args)
    if getattr(args, "winograd", False) and not getattr(args, "fast", False):
        raise UsageError("--winograd is part of the fast path", "--winograd", "add --fast")
    check_stride(args.tile_stride, args.tile, "--tile-stride", "--tile")
    fast_bf16 = getattr(args, "fast", False) and args.amp == "bf16"
    return RunOptions(
        device=device_of(args.device, args.amp),
        amp="off" if fast_bf16 else args.amp,  # the fast path stores bf16 weights itself
        channels_last=args.channels_last,
        tile=args.tile,
        tile_stride=args.tile_stride,
        tile_batch=args.batch_size,
        blend=blend,
    )


def mask_options(args: argparse.Namespace, nclass: int = 1) -> MaskOptions:
    return MaskOptions(
        nclass=nclass,
        threshold=args.mask_threshold,
        edge_thickness=DEFAULT_EDGE_THICKNESS,
        size_policy=args.mask_size_policy,
        desensitised=getattr(args, "desensitised", "positive"),
    )


def load_model(
    args: argparse.Namespace,
    device: torch.device,
    classifier: bool = False,
    required_nclass: int | None = None,
    **kwargs: object,
) -> nn.Module:
    """Build the network the checkpoint needs and load it (strict); a checkpoint that is
    missing, unreadable, unsafe, of another network, or with other than
    ``required_nclass`` map classes is a :class:`UsageError`."""
    if not args.model_path:
        raise UsageError("a checkpoint is required", "--model_path")
    path = require_file(args.model_path, "checkpoint", "--model_path")
    config = read_checkpoint_config(path).get("model", {})
    backbone = args.backbone or config.get("backbone", "resnet50")
    nclass = int(config.get("nclass", args.nclass))
    if required_nclass is not None and nclass != required_nclass:
        raise UsageError(
            f"this checkpoint gives {nclass}-class maps; this script needs {required_nclass}",
            f"--model_path {path}",
        )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the random-init warning: weights follow
        if classifier:
            head = str(kwargs.get("head") or config.get("head", "max"))
            n_img = int(kwargs.get("num_image_classes") or config.get("num_image_classes", 2))
            net: nn.Module = get_mvss_cls(
                backbone=backbone, nclass=nclass, head=head, num_image_classes=n_img
            )
        else:
            net = get_mvss(backbone=backbone, nclass=nclass)
    try:
        load_weights(net, path, strict=True)
    except WeightsError as exc:
        reason = str(exc).removeprefix(f"{path}: ")
        raise UsageError(
            f"cannot use this checkpoint: {clip(reason)}", f"--model_path {path}"
        ) from exc
    net.eval().to(device)
    if getattr(args, "int8", False):
        apply_int8(args)
        size = args.resize if getattr(args, "resize", None) else args.tile
        cache = args.int8_cache or Path(getattr(args, "save_dir", ".")) / "int8_calibration.pt"
        return int8_model(
            net,
            path,
            args.int8_calibration,
            args.int8_images,
            size,
            cache,
            getattr(args, "int8_min_gain", INT8_MIN_GAIN),
        )
    if getattr(args, "fast", False):
        dtype = torch.bfloat16 if args.amp == "bf16" else torch.float32
        tile = getattr(args, "winograd", None)
        return optimize_for_inference(
            net, dtype, args.channels_last, winograd=bool(tile), winograd_tile=tile or WINOGRAD_TILE
        ).to(device)
    if args.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return net


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")


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
    from common.evaluation import count_maps_found

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
