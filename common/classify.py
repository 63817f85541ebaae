"""Image-level classification over crops: what infer_mvss_cls.py runs.

As in the seed, an image is cut into crops (512, stride 512 by default; the last row and
column align with the far edges) and is manipulated when any crop's score passes the
threshold, i.e. the image score is the maximum crop score. ``crop=None`` scores the
whole image at once (optionally resized).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from common.evaluation import BatchRun
from common.inference import RunOptions, resize_input, tile_windows
from common.io import BadInputError, read_image
from common.masks import MaskOptions, read_ground_truth
from common.metrics import ClassificationEvaluator
from common.progress import progress
from common.runtime import autocast, to_memory_format
from common.sources import Problem, Record
from common.transforms import normalize_bgr_batch

CSV_FIELDS = ("path", "status", "reason", "score", "prediction", "label", "crops")
TABLE_KEYS = (
    "auc",
    "accuracy",
    "precision",
    "recall",
    "f1",
    "mcc",
    "fpr",
    "num_images",
    "num_failed",
)


Window = tuple[int, int, int, int]  # y0, x0, y1, x1


def seed_name_label(record: Record) -> Record:
    """The seed classifier's image ground truth: authentic when the path (as given,
    list entries resolved beside their list) contains ``orig`` or ``mosaic``,
    manipulated otherwise; any mask is dropped, the name alone decides."""
    authentic = "orig" in record.image or "mosaic" in record.image
    return Record(record.image, None, 0 if authentic else 1)


def manipulated_score(cls: torch.Tensor) -> torch.Tensor:
    """P(manipulated) per image from a classifier output: the max head's probabilities
    (N,) as they are, or 1 − P(authentic) from the linear head's logits (N, K)."""
    cls = cls.float()
    if cls.ndim == 2:
        return 1.0 - torch.softmax(cls, dim=1)[:, 0]
    return cls


def strongest_crop(
    classify: Callable[[torch.Tensor], torch.Tensor],
    crops_of: Callable[[list[Window]], torch.Tensor],
    height: int,
    width: int,
    crop: int,
    stride: int,
    group: int,
) -> tuple[torch.Tensor, int]:
    """The classifier output of the crop with the highest manipulated score, and the
    number of crops: the seed's image decision (manipulated when any crop is), shared by
    inference and by training's validation so that ``best.pt`` is chosen the way the
    model is used. ``crops_of(windows)`` gives the normalised crops (n, 3, h, w) of those
    windows (the last row and column aligned with the far edges)."""
    windows = tile_windows(height, width, crop, stride)
    best: torch.Tensor | None = None
    best_score = -1.0
    for i in range(0, len(windows), group):
        outputs = classify(crops_of(windows[i : i + group]))
        scores = manipulated_score(outputs)
        j = int(scores.argmax())
        if float(scores[j]) > best_score:
            best, best_score = outputs[j], float(scores[j])
    assert best is not None
    return best, len(windows)


@torch.inference_mode()
def classifier_outputs(model: nn.Module, x: torch.Tensor, opts: RunOptions) -> torch.Tensor:
    """The classifier output (``cls``) for a normalised batch, as the options run it."""
    with autocast(opts.device, opts.amp):
        _, _, cls = model(to_memory_format(x.to(opts.device), opts.channels_last))
    return cls.float()


def _normalised(images: list[np.ndarray], device: torch.device) -> torch.Tensor:
    return normalize_bgr_batch(torch.from_numpy(np.stack(images)).to(device))


def score_image(
    model: nn.Module,
    image: np.ndarray,
    opts: RunOptions,
    crop: int | None,
    stride: int,
    resize: int | None,
) -> tuple[float, int]:
    """(image score = max over crops, number of crops)."""
    if crop is None:
        x = _normalised([resize_input(image, resize)], opts.device)
        return float(manipulated_score(classifier_outputs(model, x, opts))[0]), 1
    image = resize_input(image, None)  # at least 64 px per side

    def crops_of(windows: list[Window]) -> torch.Tensor:
        return _normalised([image[y0:y1, x0:x1] for y0, x0, y1, x1 in windows], opts.device)

    best, n_crops = strongest_crop(
        lambda x: classifier_outputs(model, x, opts),
        crops_of,
        image.shape[0],
        image.shape[1],
        crop,
        stride,
        opts.tile_batch,
    )
    return float(manipulated_score(best[None])[0]), n_crops


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
) -> int:
    """Score every image; labels follow ``masks.desensitised`` (default ``negative``, the
    seed's classifier: an image whose mask shows only desensitised regions is authentic)."""
    masks = masks or MaskOptions(desensitised="negative")
    model.eval()
    run = BatchRun(out, CSV_FIELDS, problems)
    evaluator = ClassificationEvaluator(threshold=threshold)
    for rec in progress(records, unit="img", desc="classifying"):
        try:
            image = read_image(rec.image)
            _, label = read_ground_truth(rec.label, rec.mask, image.shape[:2], masks)
        except BadInputError as exc:
            run.fail(exc.path, exc.reason)
            continue
        score, n_crops = score_image(model, image, opts, crop, stride, resize)
        if label >= 0:
            evaluator.update([score], [label])
        run.csv.write(
            {
                "path": rec.image,
                "status": "ok",
                "score": score,
                "prediction": int(score > threshold),
                "label": label,
                "crops": n_crops,
            }
        )
    return run.finish(evaluator.compute(), TABLE_KEYS)
