"""Trivial baselines beside a model's metrics, so a reader can tell learning from luck.

``python -m common.evaluation.baselines LIST SUMMARY_JSON`` prints the model's pixel-F1, image AUC
and com-F1 next to: the all-ones map (every pixel manipulated), the all-zeros map, and a
constant image score (AUC 0.5).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from common.core.user_errors import Parser, UsageError, require_file, run_cli
from common.data.decode import read_mask_raw
from common.data.masks import (
    DEFAULT_MASK_THRESHOLD,
    DESENSITISED_POLICIES,
    IGNORE,
    MaskOptions,
    read_ground_truth,
)
from common.data.sources import read_list_file


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


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def report(
    list_file: str | Path,
    summary_path: str | Path,
    desensitised: str = "positive",
) -> str:
    """The model's pixel-F1, image AUC and com-F1 beside the trivial baselines."""
    return report_splits([("model", list_file, summary_path)], desensitised)


def report_splits(
    splits: list[tuple[str, str | Path, str | Path]], desensitised: str = "positive"
) -> str:
    """One table for several test splits side by side (name, list, summary): for each,
    the model and the all-ones map (the all-zeros map scores 0 pixel-F1 and a constant
    score 0.5 AUC everywhere), then pixel-F1 over the all-ones map's."""
    cols: list[tuple[str, dict[str, float | None]]] = []
    for name, list_file, summary_path in splits:
        summary = json.loads(Path(summary_path).read_text())
        ones = all_ones_pixel_f1(list_file, desensitised=desensitised)
        model_f1 = summary.get("pixel_f1")
        cols.append(
            (
                name,
                {
                    "pixel_f1": model_f1,
                    "pixel_f1 all-ones": ones,
                    "pixel_f1 / all-ones": model_f1 / ones if model_f1 and ones else None,
                    "image_auc": summary.get("image_auc"),
                    "image_f1": summary.get("image_f1"),
                    "com_f1": summary.get("com_f1"),
                    "images": summary.get("num_images"),
                },
            )
        )
    if len(cols) == 1:
        values = cols[0][1]
        lines = [f"{'metric':10s}  {'model':>7s}  {'all-ones map':>12s}  {'all-zeros map':>13s}"]
        lines.append(
            f"{'pixel_f1':10s}  {_fmt(values['pixel_f1']):>7s}  "
            f"{_fmt(values['pixel_f1 all-ones']):>12s}  {'0.000':>13s}"
        )
        lines.append(
            f"{'image_auc':10s}  {_fmt(values['image_auc']):>7s}  {'0.500':>12s}  {'0.500':>13s}"
        )
        lines.append(f"{'com_f1':10s}  {_fmt(values['com_f1']):>7s}  {'n/a':>12s}  {'0.000':>13s}")
        lines.append(f"pixel-F1 / all-ones pixel-F1 = {_fmt(values['pixel_f1 / all-ones'])}")
        return "\n".join(lines)
    width = max(12, *(len(n) for n, _ in cols))
    lines = [f"{'':20s}" + "".join(f"  {n:>{width}s}" for n, _ in cols)]
    for key in cols[0][1]:
        cells = []
        for _, values in cols:
            v = values[key]
            cells.append(str(v) if key == "images" and v is not None else _fmt(v))
        lines.append(f"{key:20s}" + "".join(f"  {c:>{width}s}" for c in cells))
    lines.append("(all-zeros map: pixel-F1 0; a constant score: image AUC 0.5)")
    return "\n".join(lines)


def run(argv: list[str]) -> int:
    parser = Parser(
        prog="python -m common.evaluation.baselines", description=__doc__.splitlines()[0]
    )
    parser.add_argument(
        "pairs",
        nargs="+",
        metavar="LIST SUMMARY_JSON",
        help="a test list and the summary.json computed on it (several pairs: side by side)",
    )
    parser.add_argument("--names", nargs="+", help="a column name for each pair")
    parser.add_argument(
        "--desensitised",
        choices=DESENSITISED_POLICIES,
        default="positive",
        help="the policy the summaries were computed with (positive)",
    )
    args = parser.parse_args(argv)
    if len(args.pairs) % 2:
        raise UsageError("give LIST SUMMARY_JSON pairs", "LIST SUMMARY_JSON")
    pairs = list(zip(args.pairs[::2], args.pairs[1::2], strict=True))
    names = args.names or (
        [f"split {i + 1}" for i in range(len(pairs))] if len(pairs) > 1 else ["model"]
    )
    if len(names) != len(pairs):
        raise UsageError(f"{len(names)} names for {len(pairs)} pairs", "--names")
    for list_file, summary in pairs:
        require_file(list_file, "list file", "LIST")
        require_file(summary, "summary", "SUMMARY_JSON")
        try:
            json.loads(Path(summary).read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UsageError("not a JSON summary", f"SUMMARY_JSON {summary}") from exc
    splits = [(n, lst, summ) for n, (lst, summ) in zip(names, pairs, strict=True)]
    print(report_splits(splits, args.desensitised))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, argv)


if __name__ == "__main__":
    sys.exit(main())
