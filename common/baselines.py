"""Trivial baselines beside a model's metrics, so a reader can tell learning from luck.

``python -m common.baselines LIST SUMMARY_JSON`` prints the model's pixel-F1, image AUC
and com-F1 next to: the all-ones map (every pixel manipulated), the all-zeros map, and a
constant image score (AUC 0.5).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from common.io import read_mask_raw
from common.masks import (
    DEFAULT_MASK_THRESHOLD,
    DESENSITISED_POLICIES,
    IGNORE,
    MaskOptions,
    read_ground_truth,
)
from common.sources import read_list_file
from common.usage import Parser, UsageError, require_file, run_cli


def all_ones_pixel_f1(
    list_file: str | Path,
    threshold: int = DEFAULT_MASK_THRESHOLD,
    desensitised: str = "positive",
) -> float:
    """Release pixel-F1 of predicting every pixel as manipulated, over tampered images,
    with the ground truth the evaluation used (the desensitised policy: an image that is
    authentic under it is not scored, ignored pixels count neither way)."""
    records, _ = read_list_file(list_file)
    options = MaskOptions(threshold=threshold, desensitised=desensitised)
    scores = []
    for rec in records:
        if rec.label <= 0 or rec.mask is None:
            continue
        shape = read_mask_raw(rec.mask).shape[:2]
        mask, label = read_ground_truth(rec.label, rec.mask, shape, options)
        if label <= 0 or mask is None:
            continue
        positives = float((mask == 1).sum())
        total = float((mask != IGNORE).sum())
        scores.append(2 * positives / (positives + total) if total else 1.0)
    return float(np.mean(scores)) if scores else float("nan")


def report(list_file: str | Path, summary_path: str | Path, desensitised: str = "positive") -> str:
    summary = json.loads(Path(summary_path).read_text())
    ones = all_ones_pixel_f1(list_file, desensitised=desensitised)
    rows = [
        ("pixel_f1", summary.get("pixel_f1"), ones, 0.0),
        ("image_auc", summary.get("image_auc"), 0.5, 0.5),
        ("com_f1", summary.get("com_f1"), None, 0.0),
    ]

    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.3f}"

    lines = [f"{'metric':10s}  {'model':>7s}  {'all-ones map':>12s}  {'all-zeros map':>13s}"]
    for name, model, one, zero in rows:
        lines.append(f"{name:10s}  {fmt(model):>7s}  {fmt(one):>12s}  {fmt(zero):>13s}")
    ratio = summary.get("pixel_f1") / ones if summary.get("pixel_f1") and ones else None
    lines.append(f"pixel-F1 / all-ones pixel-F1 = {fmt(ratio)}")
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    parser = Parser(prog="python -m common.baselines", description=__doc__.splitlines()[0])
    parser.add_argument("list_file", help="the test list the summary was computed on")
    parser.add_argument("summary_json", help="summary.json written by infer_mvss_calmetrics")
    parser.add_argument(
        "--desensitised",
        choices=DESENSITISED_POLICIES,
        default="positive",
        help="the policy the summary was computed with (positive)",
    )
    args = parser.parse_args(argv)
    require_file(args.list_file, "list file", "LIST_FILE")
    require_file(args.summary_json, "summary", "SUMMARY_JSON")
    try:
        json.loads(Path(args.summary_json).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UsageError("not a JSON summary", f"SUMMARY_JSON {args.summary_json}") from exc
    print(report(args.list_file, args.summary_json, args.desensitised))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
