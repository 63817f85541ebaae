"""Folder/list inference with metrics: what infer_mvss_calmetrics.py runs.

Outputs keep the release's layout, ``<save_dir>/<list name>/<model name>/pred/<stem>.png``
(8-bit ``floor(255·p)``), plus ``bin/`` (binary maps), ``overlay/`` (optional),
``per_image.csv`` (written as it goes) and ``summary.json``. Metrics are computed on the
8-bit maps as saved, so re-evaluating them with ``--pred-dir`` gives the same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from torch import nn

from common.core.progress import progress
from common.core.reports import overlay, unique_names
from common.data.decode import BadInputError, read_map_raw, write_png
from common.data.sources import Problem, Record
from common.evaluation.batch_run import BatchRun, EvalSettings
from common.evaluation.metrics import LocalizationEvaluator
from common.inference.batched import (
    Perturb,
    Prediction,
    failure_reason,
    iter_predictions,
    truth_of,
)
from common.inference.single_image import RunOptions, binary_png, manipulated_map, scored_map

IMAGE_LEVEL_STATUS = "mask size differs: image level only"
CSV_FIELDS = (
    "path",
    "status",
    "reason",
    "score",
    "label",
    "type",
    *LocalizationEvaluator.ROW_KEYS,
    "pred",
)


def _score(
    evaluator: LocalizationEvaluator, label: int, prob: np.ndarray, mask: np.ndarray | None
) -> dict[str, Any]:
    if label > 0 and mask is not None and mask.shape == prob.shape:
        rows = evaluator.update(prob[None], mask[None], [label])
    else:  # authentic, unlabelled, or a map whose size differs (the release's rule)
        rows = evaluator.update(prob[None], None, [label], scores=[float(prob.max())])
    return rows[0]


class _LocalizationRun(BatchRun):
    def __init__(self, out: Path, settings: EvalSettings, problems: Sequence[Problem]) -> None:
        super().__init__(out, CSV_FIELDS, problems, settings.quiet)
        self.settings = settings
        self.evaluator = LocalizationEvaluator(
            threshold=settings.threshold,
            image_threshold=settings.image_threshold,
            empty_f1=settings.empty_f1,
        )

    def record(
        self,
        rec: Record,
        label: int,
        prob: np.ndarray,
        mask: np.ndarray | None,
        status: str,
        pred: str,
        notes: Sequence[str] = (),
    ) -> None:
        """Score one image; ``label`` is its ground truth under the desensitised policy,
        ``notes`` the warnings about its inputs. A manipulated image whose mask was
        dropped (its size differs from the map's) is scored, and marked, at image level."""
        for note in notes:
            self.warn(note)
        if label > 0 and mask is None and rec.mask is not None:
            status = f"{status} ({IMAGE_LEVEL_STATUS})"
        row = _score(self.evaluator, label, prob, mask)
        self.csv.write(
            {
                "path": rec.image,
                "status": status,
                "score": float(prob.max()),
                "label": label,
                "type": rec.label,
                "pred": pred,
                **row,
            }
        )

    def done(self, extra: dict[str, Any]) -> int:
        metrics = self.evaluator.compute()
        metrics.update(threshold=self.settings.threshold, **extra)
        return self.finish(metrics, LocalizationEvaluator.TABLE_KEYS)


def read_saved_map(path: Path) -> np.ndarray:
    """An 8-bit map on disk as probabilities (levels / 255), as the metrics score it."""
    raw = read_map_raw(path)
    if raw.ndim == 3:
        raw = cv2.cvtColor(raw, cv2.COLOR_BGR2GRAY)
    return scored_map(raw)


def _written_maps(
    model: nn.Module,
    records: Sequence[Record],
    names: Sequence[str],
    out: Path,
    opts: RunOptions,
    settings: EvalSettings,
    perturb: Perturb | None = None,
) -> Iterator[tuple[Prediction, np.ndarray | None, str]]:
    """Predict ``records`` and write ``pred/`` (the release's 8-bit maps), ``bin/`` and
    (optionally) ``overlay/`` under ``out``; yields (prediction, the map as scored — the
    8-bit levels / 255 — or None after an error, status). Maps already written are reused
    with ``settings.skip_existing`` (status ``existing``), and left as they are when the
    rest of their batch runs again."""
    pred_dir, bin_dir, ov_dir = out / "pred", out / "bin", out / "overlay"

    def exists(i: int) -> bool:
        return settings.skip_existing and (pred_dir / f"{names[i]}.png").is_file()

    # PNG encoding runs in a thread (OpenCV releases the GIL) so it overlaps the model
    writer = ThreadPoolExecutor(max_workers=1)
    pending: list[Future[None]] = []
    predictions = iter_predictions(
        model,
        records,
        opts,
        settings.resize,
        settings.masks,
        settings.batch_size,
        settings.workers,
        keep_image=settings.save_overlay,
        skip=exists,
        perturb=perturb,
    )
    try:
        for pred in predictions:
            pred_path = pred_dir / f"{names[pred.index]}.png"
            if pred.error is not None:
                yield pred, None, pred.error
                continue
            if pred.skipped or exists(pred.index):  # recomputed only for its batch's sake
                try:
                    prob = read_saved_map(pred_path)
                except BadInputError as exc:
                    reason = f"existing map unreadable ({exc.reason}); rerun without reusing maps"
                    yield pred, None, reason
                    continue
                if pred.skipped:  # not decoded: its truth is read at its map's size
                    try:  # (the image's size: maps are written at it)
                        mask, label, notes = truth_of(pred.record, prob.shape, settings.masks)
                        pred = replace(pred, mask=mask, label=label, notes=notes)
                    except BadInputError as exc:
                        yield pred, None, failure_reason(exc, pred.record)
                        continue
                yield pred, prob, "existing"
                continue
            levels = pred.levels(lambda p: manipulated_map(p, settings.masks.desensitised))
            pending.append(writer.submit(write_png, pred_path, levels))
            binary = binary_png(levels, settings.threshold)
            pending.append(writer.submit(write_png, bin_dir / pred_path.name, binary))
            prob = scored_map(levels)
            if settings.save_overlay and pred.image is not None:
                picture = overlay(pred.image, prob)
                pending.append(writer.submit(write_png, ov_dir / pred_path.name, picture))
            yield pred, prob, "ok"
            for finished in [f for f in pending if f.done()]:
                finished.result()  # a write error (e.g. disk full) surfaces here
            pending = [f for f in pending if not f.done()]
    finally:
        writer.shutdown(wait=True)
    for f in pending:
        f.result()


def run_model_evaluation(
    model: nn.Module,
    records: Sequence[Record],
    problems: Sequence[Problem],
    out: Path,
    opts: RunOptions,
    settings: EvalSettings,
) -> int:
    """Predict, write maps as the release does, score, and report. Returns the exit code."""
    names = unique_names([r.image for r in records])
    run = _LocalizationRun(out, settings, problems)
    start = time.perf_counter()
    done = 0
    maps = _written_maps(model, records, names, out, opts, settings)
    bar = progress(maps, total=len(records), unit="img", desc="inference")
    for pred, prob, status in bar:
        rec, path = pred.record, str(out / "pred" / f"{names[pred.index]}.png")
        if prob is None:
            run.fail(rec.image, status)
            continue
        run.record(rec, pred.label, prob, pred.mask, status, path, pred.notes)
        if status == "ok":
            done += 1
            bar.set_postfix(img_s=f"{done / (time.perf_counter() - start):.2f}")
    return run.done(
        {
            "resize": settings.resize,
            "images_per_second": done / max(time.perf_counter() - start, 1e-9),
        }
    )


def predict_maps(
    model: nn.Module,
    records: Sequence[Record],
    names: Sequence[str],
    out: Path,
    opts: RunOptions,
    settings: EvalSettings,
    perturb: Perturb | None = None,
    desc: str = "inference",
    show_progress: bool = True,
) -> dict[str, str]:
    """Write the maps of ``records`` (one shard of a set, say) without scoring them;
    returns the failures, image path → reason. :func:`run_pred_dir_evaluation` scores
    the maps afterwards, exactly as a single pass would."""
    failures: dict[str, str] = {}
    maps = _written_maps(model, records, names, out, opts, settings, perturb)
    bar = progress(maps, total=len(records), unit="img", desc=desc, disable=not show_progress)
    for pred, prob, status in bar:
        if prob is None:
            failures[pred.record.image] = status
    return failures


_MAP_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


def map_candidates(image_path: str, written_name: str) -> list[str]:
    """Names a map of ``image_path`` may have, in order: the one our writer gave it
    (the stem, with a hash suffix where stems collide), the stem, and the release's
    (the file name up to its first dot)."""
    file_name = Path(image_path).name
    names = [written_name, Path(image_path).stem, file_name.split(".")[0]]
    return list(dict.fromkeys(n for n in names if n))


def find_map(pred_dir: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        for ext in _MAP_EXTENSIONS:
            candidate = pred_dir / f"{name}{ext}"
            if candidate.is_file():
                return candidate
    return None


def count_maps_found(records: Sequence[Record], pred_dir: Path) -> int:
    """How many of the records have a map in ``pred_dir`` (checked before a run)."""
    written = unique_names([r.image for r in records])
    return sum(
        find_map(pred_dir, map_candidates(r.image, n)) is not None
        for r, n in zip(records, written, strict=True)
    )


def run_pred_dir_evaluation(
    records: Sequence[Record],
    problems: Sequence[Problem],
    pred_dir: Path,
    out: Path,
    settings: EvalSettings,
    failures: dict[str, str] | None = None,
) -> int:
    """Score probability maps already on disk (8-bit, named as :func:`map_candidates`
    says: ours, or the release's). ``failures`` (image path → reason) are images whose
    map could not be made: recorded as failed with that reason."""
    run = _LocalizationRun(out, settings, problems)
    written = unique_names([r.image for r in records])
    binary = replace(settings.masks, nclass=1)
    for rec, name in progress(
        zip(records, written, strict=True), total=len(records), unit="img", desc="evaluating"
    ):
        if failures and rec.image in failures:
            run.fail(rec.image, failures[rec.image])
            continue
        candidates = map_candidates(rec.image, name)
        path = find_map(pred_dir, candidates)
        if path is None:
            tried = " or ".join(f"{c}.png" for c in candidates)
            run.fail(rec.image, f"no map named {tried} in {pred_dir}")
            continue
        try:
            prob = read_saved_map(path)
            mask, label, notes = truth_of(rec, prob.shape, binary)
        except BadInputError as exc:
            named = f"map {exc.path}: {exc.reason}" if exc.path == str(path) else None
            run.fail(rec.image, named or failure_reason(exc, rec))
            continue
        run.record(rec, label, prob, mask, "ok", str(path), notes)
    return run.done({"pred_dir": str(pred_dir)})
