"""Generate a synthetic forgery dataset (images, masks, list files, contact sheet).

Photos come from --photos DIR, or by default from those bundled with installed packages
(scikit-image's nine). Deterministic from --seed.
Exit code 2 for a user error (one line on stderr; --debug shows its traceback).
"""

from __future__ import annotations

import sys
import time

from common.synthetic import SyntheticConfig, bundled_photos, folder_photos, generate
from common.usage import (
    Parser,
    UsageError,
    at_least,
    non_negative_int,
    probability,
    require_dir,
    require_writable_dir,
    run_cli,
)


def run(argv: list[str]) -> int:
    p = Parser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--photos", help="folder of authentic photographs (default: bundled ones)")
    p.add_argument("--train", type=non_negative_int, default=600, help="training images (600)")
    p.add_argument("--val", type=non_negative_int, default=60, help="validation images (60)")
    p.add_argument("--test", type=non_negative_int, default=120, help="test images (120)")
    p.add_argument("--size", type=at_least(64), default=256, help="image side ≥ 64 (256)")
    p.add_argument(
        "--authentic-ratio", type=probability, default=0.4, help="share of authentic images"
    )
    p.add_argument(
        "--desensitise",
        type=probability,
        default=0.0,
        help="probability of a desensitised (class 2) region per image (default 0)",
    )
    p.add_argument("--seed", type=non_negative_int, default=0)
    args = p.parse_args(argv)
    if args.train + args.val + args.test == 0:
        raise UsageError("nothing to generate", "--train/--val/--test", "ask for some images")
    require_writable_dir(args.out, "--out")
    if args.photos:
        require_dir(args.photos, "photo folder", "--photos")
        try:
            photos = folder_photos(args.photos)
        except ValueError as exc:
            raise UsageError(
                str(exc).removeprefix(f"{args.photos}: "), f"--photos {args.photos}"
            ) from exc
    else:
        photos = bundled_photos()
    cfg = SyntheticConfig(
        size=args.size,
        authentic_ratio=args.authentic_ratio,
        desensitise=args.desensitise,
        seed=args.seed,
    )
    start = time.perf_counter()
    lists = generate(
        args.out, photos, {"train": args.train, "val": args.val, "test": args.test}, cfg
    )
    print(
        f"{sum([args.train, args.val, args.test])} images from {len(photos)} photos in "
        f"{time.perf_counter() - start:.1f} s"
    )
    for split, path in lists.items():
        print(f"  {split}: {path}")
    print(f"  contact sheet: {args.out}/contact_sheet.png")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
