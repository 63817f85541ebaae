"""Three-class inference with metrics: what infer_3labels_merge_calmetrics.py runs.

As the seed does it: the three-class model runs on overlapping crops (512, stride 256)
whose softmax maps are averaged; the argmax gives the class map. Outputs per image under
``<save_dir>/<list name>/<model name>/``: ``prob_tampered/``, ``prob_desensitised/``
(8-bit), ``pred/`` (index PNG 0/1/2), ``color/`` (white / red / blue), ``merged/`` (8-bit
probability of "manipulated" = 1 − P(pristine)) and ``merged_bin/``.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn
from tqdm import tqdm

from common.evaluation import BatchRun, EvalSettings
from common.inference import RunOptions, binary_png, to_png_levels
from common.io import write_png
from common.metrics import LocalizationEvaluator, ThreeClassEvaluator
from common.predictor import iter_predictions
from common.reports import colour_classes, unique_names
from common.sources import Problem, Record

CSV_FIELDS = (
    "path",
    "status",
    "reason",
    "score",
    "label",
    "f1_tampered",
    "f1_desensitised",
    "pixel_f1_manipulated",
)
TABLE_KEYS = (
    "f1_tampered",
    "iou_tampered",
    "mcc_tampered",
    "auc_tampered",
    "fpr_tampered",
    "f1_desensitised",
    "iou_desensitised",
    "mcc_desensitised",
    "auc_desensitised",
    "fpr_desensitised",
    "miou",
    "pixel_accuracy",
    "mean_pixel_accuracy",
    "merged_pixel_f1",
    "merged_image_auc",
    "merged_com_f1",
    "num_images",
    "num_failed",
)


def run_three_class_evaluation(
    model: nn.Module,
    records: Sequence[Record],
    problems: Sequence[Problem],
    out: Path,
    opts: RunOptions,
    settings: EvalSettings,
) -> int:
    names = unique_names([r.image for r in records])
    run = BatchRun(out, CSV_FIELDS, problems)
    classes = ThreeClassEvaluator(empty_f1=settings.empty_f1)
    merged = LocalizationEvaluator(threshold=settings.threshold, empty_f1=settings.empty_f1)
    predictions = iter_predictions(
        model, records, opts, settings.resize, settings.masks, settings.batch_size, settings.workers
    )
    for pred in tqdm(predictions, total=len(records), unit="img", desc="inference"):
        rec, name = pred.record, names[pred.index]
        if pred.error is not None:
            run.fail(rec.image, pred.error)
            continue
        probs = pred.probs
        if probs.shape[0] != 3:
            raise SystemExit(f"the model gives {probs.shape[0]} classes; this script needs 3")
        index_map = probs.argmax(0).astype(np.uint8)
        manipulated = 1.0 - probs[0]
        write_png(out / "prob_tampered" / f"{name}.png", to_png_levels(probs[1]))
        write_png(out / "prob_desensitised" / f"{name}.png", to_png_levels(probs[2]))
        write_png(out / "pred" / f"{name}.png", index_map)
        write_png(out / "color" / f"{name}.png", colour_classes(index_map))
        levels = to_png_levels(manipulated)
        write_png(out / "merged" / f"{name}.png", levels)
        binary = binary_png(levels, settings.threshold)
        write_png(out / "merged_bin" / f"{name}.png", binary)
        label = rec.binary_label
        target = pred.mask if pred.mask is not None else np.zeros(index_map.shape, np.uint8)
        row: dict = {"path": rec.image, "status": "ok", "label": label}
        if label >= 0:
            row.update(classes.update(probs[None], target[None])[0])
        prob8 = levels.astype(np.float32) / 255.0
        masks = (target > 0)[None] if label > 0 else None
        row["pixel_f1_manipulated"] = merged.update(prob8[None], masks, [label])[0]["pixel_f1"]
        row["score"] = float(prob8.max())
        run.csv.write(row)
    metrics = classes.compute()
    binary_metrics = merged.compute()
    for key in ("pixel_f1", "pixel_iou", "pixel_auc", "image_auc", "image_f1", "com_f1"):
        metrics[f"merged_{key}"] = binary_metrics[key]
    metrics["merged"] = binary_metrics
    metrics["notes"] = metrics["notes"] + binary_metrics["notes"]
    return run.finish(metrics, TABLE_KEYS)
