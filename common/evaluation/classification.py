"""The classifier's batch run: every image scored over crops, a per-image CSV and the
image-level metrics (what infer_mvss_cls.py and benchmark.py's classifier sets write)."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from common.core.progress import progress
from common.data.decode import IMAGE_EXTENSIONS
from common.data.masks import CLASSIFIER_DESENSITISED, MaskOptions
from common.data.sources import Problem, Record
from common.evaluation.batch_run import BatchRun
from common.evaluation.metrics import ClassificationEvaluator
from common.inference.crops import iter_scores
from common.inference.single_image import RunOptions

CSV_FIELDS = ("path", "status", "reason", "score", "prediction", "label", "crops")


def seed_name_label(record: Record, base: str | Path | None = None) -> Record:
    """The seed classifier's image ground truth: authentic when the path as its list
    gives it contains ``orig`` or ``mosaic``, manipulated otherwise; any mask is dropped,
    the name alone decides.

    ``base`` is the folder the toolkit put in front of the list's entries (the list's own
    folder, or the data root; an input folder): only the part below it is read, since
    the seed read its entries as written (a data set kept under ``/data/originals/``
    made every image authentic). A path outside ``base`` is read whole; an absolute
    list entry inside it is read below it too (the list no longer says how it was written)."""
    name = record.image
    if base is not None:
        try:
            below = os.path.relpath(os.path.abspath(record.image), os.path.abspath(base))
        except ValueError:  # another drive (Windows): not below it
            below = os.pardir
        if below.split(os.sep, 1)[0] != os.pardir:
            name = below
    authentic = "orig" in name or "mosaic" in name
    return Record(record.image, None, 0 if authentic else 1)


def name_label_base(source: str | list[str], data_root: str | None) -> Path | None:
    """The folder :func:`seed_name_label` reads below for ``--test_file source``: the
    data root or the list's folder for a list file, the folder itself for a folder;
    None for image paths and globs (read as typed)."""
    if isinstance(source, list):
        return None
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.is_file() and path.suffix.lower() not in IMAGE_EXTENSIONS:  # a list
        return Path(data_root).expanduser() if data_root else path.parent
    return None


def run_classification(
    model: nn.Module,
    records: Sequence[Record],
    problems: Sequence[Problem],
    out: Path,
    opts: RunOptions,
    crop: int | None,
    stride: int,
    resize: int | None,
    threshold: float,
    masks: MaskOptions | None = None,
    batch_size: int = 4,
    workers: int = 2,
) -> int:
    """Score every image; labels follow ``masks.desensitised`` (default ``negative``, the
    seed's classifier: an image whose mask shows only desensitised regions is authentic)."""
    masks = masks or MaskOptions(desensitised=CLASSIFIER_DESENSITISED)
    results = iter_scores(model, records, opts, crop, stride, resize, masks, batch_size, workers)
    scored = progress(results, total=len(records), unit="img", desc="classifying")
    return report_classification(records, scored, problems, out, threshold)


def report_classification(
    records: Sequence[Record],
    results: Iterable[tuple[int, dict[str, Any]]],
    problems: Sequence[Problem],
    out: Path,
    threshold: float,
    quiet: bool = False,
) -> int:
    """Write the per-image CSV and summary of (index, result) pairs (from
    :func:`iter_scores`, or gathered from several processes) in the order given."""
    run = BatchRun(out, CSV_FIELDS, problems, quiet)
    evaluator = ClassificationEvaluator(threshold=threshold)
    for index, result in results:
        rec = records[index]
        if "error" in result:
            run.fail(rec.image, result["error"])
            continue
        for note in result.get("notes", ()):
            run.warn(note)
        score, label = result["score"], result["label"]
        if label >= 0:
            evaluator.update([score], [label])
        run.csv.write(
            {
                "path": rec.image,
                "status": "ok",
                "score": score,
                "prediction": int(score > threshold),
                "label": label,
                "crops": result["crops"],
            }
        )
    return run.finish(evaluator.compute(), ClassificationEvaluator.TABLE_KEYS)
