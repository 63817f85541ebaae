"""What a finished evaluation adds about its scores: how well calibrated they are (ECE and
a reliability diagram, before and after calibration), the thresholds it used and where
they came from, and, when asked, the thresholds chosen on this very list.

Why after the run: every runner already writes ``per_image.csv`` (scores, labels) and its
maps; reading them back keeps the three runners unchanged and the numbers identical to
what a user can recompute from those files.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from common.core.checkpoint import checkpoint_digest
from common.core.reports import write_json
from common.core.scores import score_rule
from common.data.masks import (
    DEFAULT_MASK_THRESHOLD,
    RELEASE_MASK_THRESHOLD,
    RULES_DISAGREE_SHARE,
    MaskOptions,
    count_rule_disagreements,
)
from common.data.sources import Record
from common.evaluation.batch_run import read_stamp
from common.evaluation.calibration import (
    ECE_BINS,
    Calibration,
    expected_calibration_error,
    reliability_diagram,
)
from common.evaluation.thresholds import (
    ChosenThresholds,
    Thresholds,
    choose_from_maps,
    choose_from_scores,
    write_thresholds,
)
from common.inference.settings import run_score_rule


def scores_and_labels(per_image_csv: Path) -> tuple[np.ndarray, np.ndarray]:
    """The image scores and labels (≥ 0) of the images a run scored."""
    scores, labels = [], []
    with open(per_image_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            if row.get("status", "").startswith("failed") or not row.get("score"):
                continue
            try:
                label = int(float(row.get("label") or -1))
            except ValueError:
                continue
            if label >= 0:
                scores.append(float(row["score"]))
                labels.append(label)
    return np.array(scores, np.float64), np.array(labels, np.int64)


def failed_images(per_image_csv: Path) -> set[str]:
    with open(per_image_csv, newline="") as fh:
        return {r["path"] for r in csv.DictReader(fh) if r.get("status") == "failed"}


def calibration_report(out: Path, calibration: Calibration | None, title: str) -> dict[str, Any]:
    """ECE of the raw image scores (and of the calibrated ones when a calibration
    exists) on this run's labelled images, and ``reliability.png``."""
    scores, labels = scores_and_labels(out / "per_image.csv")
    if len(scores) == 0 or len(set((labels > 0).tolist())) < 2:
        return {}
    report: dict[str, Any] = {
        "image_ece": expected_calibration_error(scores, labels),
        "image_ece_bins": ECE_BINS,
    }
    curves = {"raw score": (scores, labels)}
    if calibration is not None:
        calibrated = calibration(scores)
        report["image_ece_calibrated"] = expected_calibration_error(calibrated, labels)
        curves[f"calibrated on {calibration.fitted_on}"] = (calibrated, labels)
    reliability_diagram(out / "reliability.png", curves, title)  # beside the summary
    return report


def mask_rule_report(records: Sequence[Record], mask_threshold: int) -> dict[str, Any]:
    """How many of the manipulated images' masks the release's rule (``> 0``) and the
    middle-grey rule (``> 127``) read differently (on more than 1 % of pixels)."""
    paths = [r.mask for r in records if r.mask is not None and r.label > 0]
    disagree, checked = count_rule_disagreements(paths)
    return {
        "mask_threshold": mask_threshold,
        "masks_rules_disagree": disagree,
        "masks_checked": checked,
    }


def mask_rule_line(report: dict[str, Any]) -> str | None:
    """One console line when the two rules would give other numbers, else None."""
    if not report.get("masks_rules_disagree"):
        return None
    used = report["mask_threshold"]
    other = DEFAULT_MASK_THRESHOLD if used == RELEASE_MASK_THRESHOLD else RELEASE_MASK_THRESHOLD
    return (
        f"mask rule: {report['masks_rules_disagree']} of {report['masks_checked']} masks have "
        f"grey levels on which > {RELEASE_MASK_THRESHOLD} (the release) and "
        f"> {DEFAULT_MASK_THRESHOLD} disagree on more than {RULES_DISAGREE_SHARE:.0%} of "
        f"pixels; scored with > {used} (--mask-threshold {other} for the other rule)"
    )


def finish_evaluation(
    out: Path,
    thresholds: Thresholds,
    task: str,
    records: Sequence[Record] = (),
    mask_threshold: int | None = None,
    quiet: bool = False,
) -> dict[str, Any]:
    """Add the thresholds' source, the calibration report and the mask-rule count to
    ``summary.json``, and say what a user must know on the console."""
    summary_path = out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    extra: dict[str, Any] = {
        "thresholds_source": thresholds.source,
        "image_threshold": thresholds.image,
        **calibration_report(out, thresholds.calibration, f"{out.parent.name}: image scores"),
    }
    if task != "classification":
        extra["pixel_threshold"] = thresholds.pixel
    if mask_threshold is not None:
        extra.update(mask_rule_report(records, mask_threshold))
    summary.update(extra)
    write_json(summary_path, summary)
    if not quiet and "image_ece" in extra:
        line = f"image-score ECE ({ECE_BINS} bins): {extra['image_ece']:.3f} raw"
        if "image_ece_calibrated" in extra:
            line += f", {extra['image_ece_calibrated']:.3f} calibrated"
        print(f"{line}; reliability diagram: {out / 'reliability.png'}")
    rule = mask_rule_line(extra)
    if not quiet and rule:
        print(rule)
    return extra


def maps_maker(maps_dir: Path | None, digest: str | None, score: str) -> tuple[str | None, str]:
    """The checkpoint digest and score rule of maps this toolkit wrote (the ``maps.json``
    stamp beside their ``pred/`` folder), else ``digest`` and ``score`` as given.

    Why: thresholds chosen on saved maps (``--pred-dir``) recorded 1 − P(pristine) and no
    checkpoint, even for a three-class model's P(tampered) maps, so they could be applied
    to maps of the other kind."""
    stamp = None if maps_dir is None else read_stamp(Path(maps_dir).parent)
    if stamp is None or stamp.get("task") == "classification":
        return digest, score
    classes = 3 if "tile_blend" in stamp else 1  # a three-class model's maps record their blend
    return stamp.get("checkpoint_sha256") or digest, score_rule(classes, stamp.get("desensitised"))


def choose_and_write(
    path: str | Path,
    task: str,
    out: Path,
    maps_dir: Path | None,
    records: Sequence[Record],
    masks: MaskOptions,
    empty_f1: str,
    checkpoint: str | Path | None,
) -> ChosenThresholds:
    """Choose thresholds on this run's maps (or, for the classifier, its scores), fit
    the calibration, write them to ``path`` and say so. The list they are chosen on is
    named by the run's folder (``<save_dir>/<list name>/<model>``)."""
    chosen_on = out.parent.name
    digest = checkpoint_digest(checkpoint) if checkpoint and Path(checkpoint).is_file() else None
    score = run_score_rule(checkpoint, task, masks.desensitised)  # what they are chosen on
    if checkpoint is None and task != "classification":  # --pred-dir: the maps' own maker
        digest, score = maps_maker(maps_dir, digest, score)
    if task == "classification" or maps_dir is None:
        scores, labels = scores_and_labels(out / "per_image.csv")
        chosen = choose_from_scores(scores.tolist(), labels.tolist(), chosen_on, digest, score)
    else:
        failures = failed_images(out / "per_image.csv")
        chosen = choose_from_maps(
            records, maps_dir, masks, empty_f1, chosen_on, task, failures, digest, score
        )
    write_thresholds(path, chosen)
    what = chosen.values() or "none (the list needs manipulated and authentic images)"
    calibrated = "" if chosen.calibration is None else "; image-score calibration fitted"
    print(f"thresholds {chosen.describe()}: {what}{calibrated}; written to {path}")
    return chosen
