"""Three-class inference with metrics: what infer_3labels_merge_calmetrics.py runs.

As the seed does it: the three-class model runs on overlapping crops (512, stride 256)
whose softmax maps are averaged; the argmax gives the class map. Outputs per image under
``<save_dir>/<list name>/<model name>/``: ``prob_tampered/``, ``prob_desensitised/``
(8-bit), ``pred/`` (index PNG 0/1/2), ``color/`` (white / red / blue), ``merged/`` (8-bit
probability of "manipulated" = 1 − P(pristine)) and ``merged_bin/``; per image and in
summary the seed's per-image metrics
(:class:`common.evaluation.metrics.ThreeClassEvaluator`), also as
the seed's ``3kinds_metric.csv``.
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from torch import nn

from common.core.progress import progress
from common.core.reports import colour_classes, unique_names
from common.data.decode import write_png
from common.data.sources import Problem, Record
from common.evaluation.batch_run import BatchRun, EvalSettings
from common.evaluation.metrics import LocalizationEvaluator, ThreeClassEvaluator
from common.inference.batched import iter_predictions
from common.inference.single_image import RunOptions, binary_png, manipulated_map, scored_map

# Our key → the seed's column in 3kinds_metric.csv (its "mauc" column is always 0 there:
# written empty here).
SEED_COLUMNS = {
    "f1_tampered": "f1-1",
    "iou_tampered": "iou-1",
    "mcc_tampered": "mcc-1",
    "auc_tampered": "auc-1",
    "fpr_tampered": "fpr-1",
    "f1_desensitised": "f1-2",
    "iou_desensitised": "iou-2",
    "mcc_desensitised": "mcc-2",
    "auc_desensitised": "auc-2",
    "fpr_desensitised": "fpr-2",
    "miou": "miou",
    "mauc": "mauc",
    "pixel_accuracy": "pa",
    "mean_pixel_accuracy": "mpa",
}
SEED_KEYS = ThreeClassEvaluator.ROW_KEYS
MERGED_TABLE_KEYS = ("merged_pixel_f1", "merged_image_auc", "merged_com_f1")
CSV_FIELDS = ("path", "status", "reason", "score", "label", *SEED_KEYS, "pixel_f1_manipulated")
TABLE_KEYS = (*ThreeClassEvaluator.TABLE_KEYS, *MERGED_TABLE_KEYS, "num_images")


def write_seed_table(path: Path, rows: Sequence[dict], means: dict) -> None:
    """``3kinds_metric.csv`` laid out as the seed writes it: a row per image (img, gt,
    values), an ``Average`` row with the image count, and the closing ``END`` row."""
    columns = list(SEED_COLUMNS.values())
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["img", "gt", *columns])
        for row in rows:
            values = [row.get(key, "") for key in SEED_COLUMNS]
            writer.writerow([Path(row["path"]).name, row["gt"], *values])
        averages = [means.get(key, "") for key in SEED_COLUMNS]
        writer.writerow(["Average", len(rows), *averages])
        writer.writerow(["END", "END", *columns])


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
    seed_rows: list[dict] = []
    classes = ThreeClassEvaluator(empty_f1=settings.empty_f1)
    merged = LocalizationEvaluator(
        threshold=settings.threshold,
        image_threshold=settings.image_threshold,
        empty_f1=settings.empty_f1,
    )
    predictions = iter_predictions(
        model, records, opts, settings.resize, settings.masks, settings.batch_size, settings.workers
    )
    for pred in progress(predictions, total=len(records), unit="img", desc="inference"):
        rec, name = pred.record, names[pred.index]
        if pred.error is not None:
            run.fail(rec.image, pred.error)
            continue
        for note in pred.notes:
            run.warn(note)
        probs = pred.probs
        if probs.shape[0] != 3:
            raise SystemExit(f"the model gives {probs.shape[0]} classes; this script needs 3")
        index_map = probs.argmax(0).astype(np.uint8)
        write_png(out / "prob_tampered" / f"{name}.png", pred.levels(lambda p: p[1]))
        write_png(out / "prob_desensitised" / f"{name}.png", pred.levels(lambda p: p[2]))
        write_png(out / "pred" / f"{name}.png", index_map)
        write_png(out / "color" / f"{name}.png", colour_classes(index_map))
        levels = pred.levels(manipulated_map)
        write_png(out / "merged" / f"{name}.png", levels)
        binary = binary_png(levels, settings.threshold)
        write_png(out / "merged_bin" / f"{name}.png", binary)
        label = pred.label
        target = pred.mask if pred.mask is not None else np.zeros(index_map.shape, np.uint8)
        row: dict = {"path": rec.image, "status": "ok", "label": label}
        if label >= 0:
            row.update(classes.update(probs[None], target[None])[0])
            seed_rows.append({**row, "gt": Path(rec.mask).name if rec.mask else ""})
        prob8 = scored_map(levels)
        masks = (target > 0)[None] if label > 0 else None
        row["pixel_f1_manipulated"] = merged.update(prob8[None], masks, [label])[0]["pixel_f1"]
        row["score"] = float(prob8.max())
        run.csv.write(row)
    metrics = classes.compute()
    write_seed_table(out / "3kinds_metric.csv", seed_rows, metrics)
    binary_metrics = merged.compute()
    for key in ("pixel_f1", "pixel_iou", "pixel_auc", "image_auc", "image_f1", "com_f1"):
        metrics[f"merged_{key}"] = binary_metrics[key]
    metrics["merged"] = binary_metrics
    metrics["notes"] = metrics["notes"] + binary_metrics["notes"]
    return run.finish(metrics, TABLE_KEYS)
