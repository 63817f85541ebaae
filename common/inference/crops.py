"""Image-level scores over crops: what the classifier runs on each image.

As in the seed, an image is cut into crops (512, stride 512 by default; the last row and
column align with the far edges) and is manipulated when any crop's score passes the
threshold, i.e. the image score is the maximum crop score. ``crop=None`` scores the
whole image at once (optionally resized).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from common.core.release import RELEASE_SIZE
from common.core.scores import manipulated_probability
from common.data.masks import MaskOptions
from common.data.sources import Record
from common.data.transforms import normalize_bgr_batch
from common.inference.batched import Perturb, iter_decoded
from common.inference.single_image import RunOptions, resize_input, run_model, tile_windows

# The seed's classifier crops: 512 at stride 512 (infer_mvss_cls.py and benchmark.py).
DEFAULT_CROP = RELEASE_SIZE
DEFAULT_CROP_STRIDE = RELEASE_SIZE


Window = tuple[int, int, int, int]  # y0, x0, y1, x1


def classifier_crops(
    args: Any,
    trained_crop: int | None,
    trained_resize: int | None = None,
    resize_given: bool = True,
) -> str:
    """Fill in ``args.crop`` and ``args.crop_stride`` where they were not given (parsed
    with ``argparse.SUPPRESS``): the crop the checkpoint trained on, whose validation
    chose its stored threshold (a 192-px model run on 512-px crops scores other numbers
    against it); for a checkpoint trained on whole images resized to ``trained_resize``
    (``crop: false``), whole images, at that size unless ``--resize`` was given; else the
    seed's 512. The stride defaults to the crop (crops side by side, the seed's).
    Returns where the crop came from, for the run's header."""
    if hasattr(args, "crop"):
        source = "given"
    elif trained_crop is not None:
        args.crop, source = trained_crop, "the checkpoint's training crop"
    elif trained_resize is not None:
        if resize_given and args.resize is None:  # --resize none: full resolution, crops
            args.crop, source = DEFAULT_CROP, "the seed's, at full resolution (--resize none)"
        else:
            args.crop, source = None, "the checkpoint trained on whole images"
            if not resize_given:
                args.resize = trained_resize
                source += f" resized to {trained_resize}"
    else:
        args.crop, source = DEFAULT_CROP, "the seed's"
    if not hasattr(args, "crop_stride"):
        args.crop_stride = args.crop or DEFAULT_CROP_STRIDE
    return source


def manipulated_score(cls: torch.Tensor, desensitised: str) -> torch.Tensor:
    """P(manipulated) per image from a classifier output: the max head's probabilities
    (N,) as they are, or from the linear head's logits (N, K) 1 − P(authentic). With
    three image classes (authentic / tampered / desensitised only) and ``desensitised``
    ``negative`` or ``ignore``, P(tampered): there a desensitised-only image is not
    manipulated (the evaluation's labels say so), so its class must not raise the score."""
    cls = cls.float()
    if cls.ndim != 2:
        return cls
    return manipulated_probability(torch.softmax(cls, dim=1), 1, desensitised)


def strongest_crop(
    classify: Callable[[torch.Tensor], torch.Tensor],
    crops_of: Callable[[list[Window]], torch.Tensor],
    height: int,
    width: int,
    crop: int,
    stride: int,
    group: int,
    desensitised: str,
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
        scores = manipulated_score(outputs, desensitised)
        j = int(scores.argmax())
        if float(scores[j]) > best_score:
            best, best_score = outputs[j], float(scores[j])
    assert best is not None
    return best, len(windows)


def _batch(images: list[np.ndarray], opts: RunOptions) -> torch.Tensor:
    return normalize_bgr_batch(torch.from_numpy(np.stack(images)).to(opts.device))


def score_crops(
    model: nn.Module,
    image: np.ndarray,
    opts: RunOptions,
    crop: int,
    stride: int,
    desensitised: str,
) -> tuple[float, int]:
    """(image score = the strongest crop's, number of crops) for a decoded image;
    ``desensitised`` as :func:`manipulated_score` takes it."""
    image = resize_input(image, None)  # at least 64 px per side

    def crops_of(windows: list[Window]) -> torch.Tensor:
        return _batch([image[y0:y1, x0:x1] for y0, x0, y1, x1 in windows], opts)

    best, n_crops = strongest_crop(
        lambda x: run_model(model, x, opts).cls,
        crops_of,
        image.shape[0],
        image.shape[1],
        crop,
        stride,
        opts.tile_batch,
        desensitised,
    )
    return float(manipulated_score(best[None], desensitised)[0]), n_crops


def score_image(
    model: nn.Module,
    image: np.ndarray,
    opts: RunOptions,
    crop: int | None,
    stride: int,
    resize: int | None,
    desensitised: str,
) -> tuple[float, int]:
    """(image score, number of crops) for one decoded image: over crops, or the whole
    image resized by ``resize`` when ``crop`` is None."""
    if crop is not None:
        return score_crops(model, image, opts, crop, stride, desensitised)
    cls = run_model(model, _batch([resize_input(image, resize)], opts), opts).cls
    return float(manipulated_score(cls, desensitised)[0]), 1


def _truth(item: dict[str, Any]) -> dict[str, Any]:
    """An image's label and the warnings about its mask, as a result carries them."""
    return {"label": item["label"], "notes": list(item["notes"])}


def iter_scores(
    model: nn.Module,
    records: Sequence[Record],
    opts: RunOptions,
    crop: int | None,
    stride: int,
    resize: int | None,
    masks: MaskOptions,
    batch_size: int,
    workers: int,
    perturb: Perturb | None = None,
) -> Iterator[tuple[int, dict[str, Any]]]:
    """(index, result) per record in order, from the predictor's decoding workers: a
    result holds ``score``, ``crops`` and ``label``, or ``error``. Whole images
    (``crop=None``) go through the model ``batch_size`` at a time; ``perturb`` degrades
    each image first. Scores follow ``masks.desensitised`` as the labels do
    (:func:`manipulated_score`)."""
    model.eval()
    size = None if crop else resize
    decoded = iter_decoded(records, size, masks, batch_size, workers, perturb=perturb)
    for batch in decoded:
        scores: dict[int, float] = {}
        ready = [b for b in batch if "input" in b]
        if ready:
            x = normalize_bgr_batch(torch.stack([b["input"] for b in ready]).to(opts.device))
            values = manipulated_score(run_model(model, x, opts).cls, masks.desensitised)
            scores = {b["index"]: float(v) for b, v in zip(ready, values, strict=True)}
        for b in batch:
            if "error" in b:
                yield b["index"], {"error": b["error"]}
            elif b["index"] in scores:
                yield b["index"], {"score": scores[b["index"]], "crops": 1, **_truth(b)}
            else:
                assert crop is not None
                score, n_crops = score_crops(
                    model, b["image"], opts, crop, stride, masks.desensitised
                )
                yield b["index"], {"score": score, "crops": n_crops, **_truth(b)}
