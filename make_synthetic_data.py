"""Generate a synthetic forgery dataset (images, masks, list files, contact sheet).

Photos come from --photos DIR, or by default from those bundled with installed packages
(scikit-image; matplotlib's grace_hopper.jpg when installed). Deterministic from --seed.
"""

from __future__ import annotations

import argparse
import sys
import time

from common.synthetic import SyntheticConfig, bundled_photos, folder_photos, generate


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--photos", help="folder of authentic photographs (default: bundled ones)")
    p.add_argument("--train", type=int, default=600, help="training images (default 600)")
    p.add_argument("--val", type=int, default=60, help="validation images (default 60)")
    p.add_argument("--test", type=int, default=120, help="test images (default 120)")
    p.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    p.add_argument("--authentic-ratio", type=float, default=0.4, help="share of authentic images")
    p.add_argument(
        "--desensitise",
        type=float,
        default=0.0,
        help="probability of a desensitised (class 2) region per image (default 0)",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    photos = folder_photos(args.photos) if args.photos else bundled_photos()
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


if __name__ == "__main__":
    sys.exit(main())
