"""Image-level classification over crops: what infer_mvss_cls.py runs.

As in the seed, an image is cut into crops (512, stride 512 by default; the last row and
column align with the far edges) and is manipulated when any crop's score passes the
threshold, i.e. the image score is the maximum crop score. ``crop=None`` scores the
whole image at once (optionally resized).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from common.evaluation import BatchRun
from common.inference import RunOptions, resize_input, tile_windows
from common.io import BadInputError, read_image
from common.metrics import ClassificationEvaluator
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


@torch.inference_mode()
def crop_scores(model: nn.Module, crops: np.ndarray, opts: RunOptions) -> np.ndarray:
    """Scores in [0, 1] of 'manipulated' for a stack of crops (N, h, w, 3) uint8."""
    x = normalize_bgr_batch(torch.from_numpy(crops).to(opts.device))
    with autocast(opts.device, opts.amp):
        _, _, cls = model(to_memory_format(x, opts.channels_last))
    cls = cls.float()
    if cls.ndim == 2:  # linear head: logits over image classes
        cls = 1.0 - torch.softmax(cls, dim=1)[:, 0]
    return cls.cpu().numpy()


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
        return float(crop_scores(model, resize_input(image, resize)[None], opts)[0]), 1
    image = resize_input(image, None)  # at least 64 px per side
    windows = tile_windows(image.shape[0], image.shape[1], crop, stride)
    best = 0.0
    for i in range(0, len(windows), opts.tile_batch):
        group = windows[i : i + opts.tile_batch]
        stack = np.stack([image[y0:y1, x0:x1] for y0, x0, y1, x1 in group])
        best = max(best, float(crop_scores(model, stack, opts).max()))
    return best, len(windows)


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
) -> int:
    model.eval()
    run = BatchRun(out, CSV_FIELDS, problems)
    evaluator = ClassificationEvaluator(threshold=threshold)
    for rec in tqdm(records, unit="img", desc="classifying"):
        try:
            image = read_image(rec.image)
        except BadInputError as exc:
            run.fail(exc.path, exc.reason)
            continue
        score, n_crops = score_image(model, image, opts, crop, stride, resize)
        label = rec.binary_label
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
