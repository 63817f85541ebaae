"""Generate a synthetic forgery dataset (images, masks, list files, contact sheet).

Photos come from --photos DIR (streamed: tens of thousands are fine), or by default from
those bundled with installed packages. Each photograph goes to one split only, so
validation and test measure photographs the model never saw (--test-seen adds a test
split cut from the training photographs). Parallel, resumable, deterministic from --seed.
Exit code 2 for a user error (one line on stderr; --debug shows its traceback).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import numpy as np

from common.core.distributed import refuse_several_processes
from common.core.user_errors import (
    Parser,
    UsageError,
    at_least,
    non_negative_int,
    probability,
    require_dir,
    require_file,
    require_writable_dir,
    run_cli,
)
from common.data.decode import BadInputError
from common.synth.coco import CocoError, attach_objects, file_digest, read_objects
from common.synth.forgery import SyntheticConfig
from common.synth.generate import GenerationMismatchError, generate
from common.synth.photos import (
    SEEN_TEST,
    PhotoPool,
    assign_splits,
    bundled_photo_set,
    bundled_splits,
    scan_folder,
)
from common.synth.post import PostConfig


def _fractions(text: str) -> tuple[float, float, float]:
    try:
        parts = tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected three numbers, got {text!r}") from exc
    finite = all(math.isfinite(v) for v in parts) and math.isfinite(sum(parts))
    if len(parts) != 3 or not finite or min(parts) < 0 or sum(parts) <= 0:
        raise argparse.ArgumentTypeError(
            f"expected TRAIN,VAL,TEST shares: finite numbers ≥ 0, not all 0; got {text!r}"
        )
    return parts  # type: ignore[return-value]


def _parser() -> Parser:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder (an earlier run there resumes)")
    p.add_argument("--photos", help="folder of authentic photographs (default: bundled ones)")
    p.add_argument(
        "--coco-annotations",
        help="COCO instances_*.json for --photos: splice, copy and remove real object outlines",
    )
    p.add_argument("--train", type=non_negative_int, default=600, help="training images (600)")
    p.add_argument("--val", type=non_negative_int, default=60, help="validation images (60)")
    p.add_argument("--test", type=non_negative_int, default=120, help="test images (120)")
    p.add_argument(
        "--test-seen",
        type=non_negative_int,
        default=0,
        help=f"images of a '{SEEN_TEST}' split cut from the training photographs (0)",
    )
    p.add_argument(
        "--photo-split",
        type=_fractions,
        default=(0.8, 0.1, 0.1),
        help="shares of --photos for train,val,test (0.8,0.1,0.1); bundled photos: fixed",
    )
    p.add_argument(
        "--shared-photos",
        action="store_true",
        help="every split from every photo (content seen in training appears in test)",
    )
    p.add_argument(
        "--group-by-folder",
        action="store_true",
        help="photos in one sub-folder (a burst, one scene) go to one split together",
    )
    p.add_argument("--size", type=at_least(64), default=256, help="image side ≥ 64 (256)")
    p.add_argument(
        "--work-size",
        type=at_least(64),
        help="side at which manipulations are made before resizing to --size (= --size)",
    )
    p.add_argument(
        "--authentic-ratio", type=probability, default=0.4, help="share of authentic images"
    )
    p.add_argument(
        "--desensitise",
        type=probability,
        default=0.0,
        help="probability of a desensitised (class 2) region per image (default 0)",
    )
    post = p.add_argument_group("post-processing (every image, authentic ones too)")
    post.add_argument("--noise", type=probability, default=0.5, help="mild Gaussian noise (0.5)")
    post.add_argument("--jpeg", type=probability, default=0.8, help="final JPEG save (0.8)")
    post.add_argument(
        "--double-jpeg",
        type=probability,
        default=0.0,
        help="the photo was a JPEG before editing, aligned or shifted 8×8 grid (0)",
    )
    post.add_argument(
        "--resize-chain", type=probability, default=0.0, help="1–3 random resamplings (0)"
    )
    post.add_argument(
        "--social",
        type=probability,
        default=0.0,
        help="social-platform re-compression: downscale, 4:2:0 JPEG 70–85, maybe twice (0)",
    )
    p.add_argument(
        "--workers",
        type=non_negative_int,
        default=min(8, os.cpu_count() or 1),
        help="worker processes (default: CPU cores, at most 8; 0 = in this process)",
    )
    p.add_argument("--overwrite", action="store_true", help="start again instead of resuming")
    p.add_argument("--seed", type=non_negative_int, default=0)
    return p


def _assignment(args: argparse.Namespace, splits: list[str]) -> dict:
    """Each split's photographs."""
    if not args.photos:
        if args.coco_annotations:
            raise UsageError("--coco-annotations needs --photos (the COCO images)")
        if args.shared_photos:
            every = bundled_photo_set()
            return {s: every for s in splits}
        return bundled_splits(splits)
    require_dir(args.photos, "photo folder", "--photos")
    photos = scan_folder(args.photos, args.group_by_folder)
    if len(photos) < 2:
        raise UsageError(
            f"need at least 2 photographs, found {len(photos)} image files",
            f"--photos {args.photos}",
        )
    if args.coco_annotations:
        require_file(args.coco_annotations, "COCO annotation file", "--coco-annotations")
        try:
            objects = read_objects(args.coco_annotations)
        except CocoError as exc:
            raise UsageError(str(exc), "--coco-annotations") from exc
        photos, matched = attach_objects(photos, objects)
        if not matched:
            raise UsageError(
                "no photo of the folder is named in the annotations",
                f"--coco-annotations {args.coco_annotations}",
                "pass the folder of the images that file describes",
            )
        print(f"object outlines for {matched} of {len(photos)} photos")
    if args.shared_photos:
        return {s: photos for s in splits}
    # train/val/test are always shared out by --photo-split, whichever are generated now,
    # so a test set made later from the same folder and seed never reuses training photos
    shares = dict(zip(("train", "val", "test"), args.photo_split, strict=True))
    if empty := [s for s in splits if s != SEEN_TEST and shares[s] <= 0]:
        raise UsageError(
            f"split {empty[0]} is asked for but gets no photos", "--photo-split", "give it a share"
        )
    own = [s for s in ("train", "val", "test") if shares[s] > 0]
    try:
        assignment = assign_splits(photos, own, [shares[s] for s in own], args.seed)
    except ValueError as exc:
        raise UsageError(str(exc), f"--photos {args.photos}", "use --shared-photos") from exc
    if SEEN_TEST in splits and "train" not in assignment:
        raise UsageError(f"{SEEN_TEST} needs training photos", "--photo-split")
    if SEEN_TEST in splits:
        assignment[SEEN_TEST] = assignment["train"]
    return {s: assignment[s] for s in splits}


def run(argv: list[str]) -> int:
    refuse_several_processes(
        "make_synthetic_data.py", "run it without torchrun; --workers N shares the work out"
    )
    args = _parser().parse_args(argv)
    counts = {"train": args.train, "val": args.val, "test": args.test}
    if args.test_seen:
        counts[SEEN_TEST] = args.test_seen
    counts = {s: n for s, n in counts.items() if n > 0}
    if not counts:
        raise UsageError("nothing to generate", "--train/--val/--test", "ask for some images")
    if SEEN_TEST in counts and "train" not in counts:
        raise UsageError(
            f"{SEEN_TEST} is cut from the training photos", "--test-seen", "add --train"
        )
    require_writable_dir(args.out, "--out")
    assignment = _assignment(args, list(counts))
    for split, photos in assignment.items():  # one decode each, before anything is written
        try:
            PhotoPool(photos).pick(np.random.default_rng(0))
        except BadInputError as exc:
            raise UsageError(f"split {split}: {exc.reason}", exc.path, "check --photos") from exc
    annotations = file_digest(args.coco_annotations) if args.coco_annotations else None
    cfg = SyntheticConfig(
        size=args.size,
        work_size=args.work_size,
        authentic_ratio=args.authentic_ratio,
        desensitise=args.desensitise,
        seed=args.seed,
        post=PostConfig(
            noise_p=args.noise,
            jpeg_p=args.jpeg,
            double_jpeg_p=args.double_jpeg,
            resize_chain_p=args.resize_chain,
            social_p=args.social,
        ),
    )
    start = time.perf_counter()
    try:
        report = generate(
            args.out,
            assignment,
            counts,
            cfg,
            workers=args.workers,
            overwrite=args.overwrite,
            show_progress=True,
            extra_settings={"coco_annotations_sha256": annotations},
        )
    except GenerationMismatchError as exc:
        raise UsageError(str(exc), f"--out {args.out}", "use another --out or --overwrite") from exc
    except BadInputError as exc:  # e.g. every photograph of a split unreadable
        raise UsageError(f"cannot make images: {exc.reason}", exc.path, "check --photos") from exc
    elapsed = time.perf_counter() - start
    total = sum(counts.values())
    rate = f", {report.made / elapsed:.1f} img/s" if report.made and elapsed > 0 else ""
    resumed = f" ({report.reused} already there)" if report.reused else ""
    print(f"{total} images{resumed} in {elapsed:.1f} s{rate}")
    for split, path in report.lists.items():
        print(f"  {split}: {path} ({len(assignment[split])} photos)")
    print(f"  photo splits: {args.out}/photo_splits.csv")
    print(f"  contact sheet: {args.out}/contact_sheet.png")
    if report.bad_photos:
        print(f"  {len(report.bad_photos)} unreadable photos skipped:", file=sys.stderr)
        for name, reason in sorted(report.bad_photos.items())[:20]:
            print(f"    {name}: {reason}", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
