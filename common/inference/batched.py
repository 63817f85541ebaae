"""Batched inference over many images: workers decode and resize while the model runs.

:func:`iter_predictions` yields one :class:`Prediction` per record, in order, with the
probability maps at the original size (or the error that stopped that image). Scripts
decide what to write; a bad image never stops the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from common.core.release import RELEASE_SIZE
from common.data.decode import BadInputError, read_image
from common.data.masks import MaskOptions, read_ground_truth
from common.data.sources import Record
from common.inference.single_image import (
    RunOptions,
    forward_probs,
    predict_tiled,
    release_levels,
    resize_input,
    resize_map,
    to_png_levels,
)

# Degrades a decoded BGR image, given its path (see common.benchmark.degradations.Perturbation).
Perturb = Callable[[np.ndarray, str], np.ndarray]


@dataclass
class Prediction:
    """One image's result: ``probs`` (C, H, W) at the original size, or ``error``.

    ``net_probs`` keeps the maps at the network's size when the image was resized for
    the network (None for full-resolution tiles): the release writes its 8-bit maps from
    those (see :meth:`levels`).
    """

    index: int
    record: Record
    probs: np.ndarray | None = None
    mask: np.ndarray | None = None
    image: np.ndarray | None = None
    error: str | None = None
    skipped: bool = False  # not run: the caller said its output already exists
    net_probs: np.ndarray | None = None
    label: int = -1  # image-level ground truth under the desensitised policy
    notes: tuple[str, ...] = ()  # warnings about this image's inputs (a mask resized)

    def levels(self, channel_map: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
        """8-bit map at the original size of ``channel_map(probs)`` (e.g. the
        manipulated map or one class), written as the release writes its maps."""
        assert self.probs is not None
        if self.net_probs is None:
            return to_png_levels(channel_map(self.probs))
        return release_levels(channel_map(self.net_probs), self.probs.shape[-2:])


class _InferenceItems(Dataset):
    """Decodes an image (and its mask) and prepares the network input, in a worker."""

    def __init__(
        self,
        records: Sequence[Record],
        resize: int | None,
        masks: MaskOptions,
        keep_image: bool,
        skip: Callable[[int], bool],
        perturb: Perturb | None = None,
    ) -> None:
        self.records = records
        self.resize = resize
        self.masks = masks
        self.keep_image = keep_image
        self.skip = skip
        self.perturb = perturb

    def __len__(self) -> int:
        return len(self.records)

    def _truth(self, rec: Record, shape: tuple[int, int]) -> dict[str, Any]:
        mask, label, notes = truth_of(rec, shape, self.masks)
        return {"mask": mask, "label": label, "notes": notes}

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        try:
            if self.skip(index):  # its map exists: the caller reads the truth at its size
                return {"index": index, "skipped": True}
            image = read_image(rec.image)
            size = image.shape[:2]  # maps are scored at the original size
            if self.perturb is not None:
                image = self.perturb(image, rec.image)
            item: dict[str, Any] = {
                "index": index,
                "size": size,
                **self._truth(rec, size),
                "image": image if (self.keep_image or self.resize is None) else None,
            }
            if self.resize is not None:
                item["input"] = torch.from_numpy(resize_input(image, self.resize))
            return item
        except BadInputError as exc:
            return {"index": index, "error": failure_reason(exc, rec)}
        except (OSError, ValueError, MemoryError) as exc:
            return {"index": index, "error": f"{type(exc).__name__}: {exc}"}


def truth_of(
    rec: Record, shape: tuple[int, ...], masks: MaskOptions
) -> tuple[np.ndarray | None, int, tuple[str, ...]]:
    """``rec``'s mask and label for an image (or its map) of ``shape``, and the warnings
    reading them gave (:func:`~common.data.masks.read_ground_truth`)."""
    notes: list[str] = []
    mask, label = read_ground_truth(rec.label, rec.mask, shape[:2], masks, notes)
    return mask, label, tuple(notes)


def failure_reason(exc: BadInputError, rec: Record) -> str:
    """Why a row failed, recorded against its image: the file is named when it is not
    the image itself (an unreadable mask must not read as a bad image)."""
    if exc.path == str(rec.image):
        return exc.reason
    kind = "mask" if exc.path == str(rec.mask) else "file"
    named = f"{exc.path}: {exc.reason}"
    return named if exc.reason.startswith(kind) else f"{kind} {named}"


def _passthrough(batch: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return batch


def iter_decoded(
    records: Sequence[Record],
    resize: int | None,
    masks: MaskOptions | None = None,
    batch_size: int = 4,
    workers: int = 2,
    keep_image: bool = False,
    skip: Callable[[int], bool] | None = None,
    perturb: Perturb | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Batches of decoded records, in order, from ``workers`` processes: each item has
    ``index`` and either ``error``, or ``skipped``, or the ground truth (``mask``,
    ``label``), the original ``size``, the network ``input`` (uint8, resized; with
    ``resize``) and the decoded ``image`` (without ``resize``, or with ``keep_image``).
    ``perturb(image, path)`` degrades the decoded image (not the mask) in the worker."""
    items = _InferenceItems(
        records, resize, masks or MaskOptions(), keep_image, skip or (lambda _: False), perturb
    )
    yield from DataLoader(
        items,
        batch_size=batch_size,
        num_workers=workers,
        collate_fn=_passthrough,
        persistent_workers=False,
        prefetch_factor=4 if workers > 0 else None,
    )


def _whole_batches(
    skip: Callable[[int], bool], length: int, batch_size: int
) -> Callable[[int], bool]:
    """``skip`` widened to whole batches: an image is skipped only when every image of its
    batch is, so a resumed run computes each map in the same batch as an uninterrupted
    one (kernels may round differently for a smaller batch)."""
    size = max(1, batch_size)

    def whole(index: int) -> bool:
        start = index - index % size
        return all(skip(i) for i in range(start, min(start + size, length)))

    return whole


def iter_predictions(
    model: nn.Module,
    records: Sequence[Record],
    opts: RunOptions,
    resize: int | None = RELEASE_SIZE,
    masks: MaskOptions | None = None,
    batch_size: int = 4,
    workers: int = 2,
    keep_image: bool = False,
    skip: Callable[[int], bool] | None = None,
    perturb: Perturb | None = None,
) -> Iterator[Prediction]:
    """Predict every record, yielding results in order. ``resize=None`` → tiled, full
    resolution. ``skip(index)`` marks images whose outputs already exist (their masks are
    still read, so metrics stay complete); a batch runs whole while any of its images
    lacks an output. ``perturb`` degrades each image first; maps
    come back at the original size either way."""
    model.eval()
    if skip is not None and resize is not None:  # batched; tiles run one image at a time
        skip = _whole_batches(skip, len(records), batch_size)
    decoded = iter_decoded(records, resize, masks, batch_size, workers, keep_image, skip, perturb)
    for batch in decoded:
        ready = [b for b in batch if "input" in b]
        probs_by_index: dict[int, np.ndarray] = {}
        net_by_index: dict[int, np.ndarray] = {}
        if ready:
            probs = forward_probs(model, torch.stack([b["input"] for b in ready]), opts).numpy()
            for b, p in zip(ready, probs, strict=True):
                probs_by_index[b["index"]] = resize_map(p, tuple(b["size"]))
                net_by_index[b["index"]] = p
        for b in batch:
            rec = records[b["index"]]
            if "error" in b:
                yield Prediction(b["index"], rec, error=b["error"])
            elif b.get("skipped"):
                yield Prediction(b["index"], rec, skipped=True, label=rec.binary_label)
            else:
                probs_i = probs_by_index.get(b["index"])
                if probs_i is None:  # tiled, full resolution
                    try:
                        probs_i = predict_tiled(model, b["image"], opts)
                        if probs_i.shape[-2:] != tuple(b["size"]):  # a resized image
                            probs_i = resize_map(probs_i, tuple(b["size"]))
                    except (RuntimeError, MemoryError) as exc:
                        yield Prediction(b["index"], rec, error=f"{type(exc).__name__}: {exc}")
                        continue
                yield Prediction(
                    b["index"],
                    rec,
                    probs_i,
                    b["mask"],
                    b["image"] if keep_image else None,
                    net_probs=net_by_index.get(b["index"]),
                    label=b["label"],
                    notes=b["notes"],
                )
