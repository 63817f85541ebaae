"""The dataset every script uses: records → (image, mask, edge mask, label, path).

A sample that cannot be loaded does not raise: it comes back as an error entry, which
:func:`collate_samples` drops from the batch and reports under ``skipped`` so the
training/evaluation loop can count and log it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from common.data.decode import BadInputError, read_image
from common.data.masks import (
    IGNORE,
    MaskOptions,
    binary_from_classes,
    edge_from_mask,
    edge_ignore_band,
    edge_map_size,
    read_classes,
    read_mask,
    reduce_binary,
    sample_labels,
)
from common.data.sources import Record
from common.data.transforms import normalize_bgr, seed_pipeline

__all__ = ["ForgeryDataset", "MaskOptions", "collate_samples"]


class ForgeryDataset(Dataset):
    """Images with masks, edge masks and labels, from any source's records.

    Items are dicts: ``image`` (float 3×H×W, normalised BGR), ``mask`` (float 1×H×W in
    {0, 1} for binary, int64 H×W in {0, 1, 2} for three classes), ``edge`` (float
    1×⌈H/4⌉×⌈W/4⌉), ``label`` (0/1, −1 unlabelled), ``type`` (the list's label, 0 when
    the sample is authentic), ``image_class`` (0 authentic, 1 tampered, 2 desensitised
    only), ``path``, ``size`` (original H, W) and ``index``.

    ``labels_from_content=True`` (training) takes the label from the mask *after* the
    transform, so a crop or resize that loses the manipulated region trains as authentic;
    see :func:`common.data.masks.sample_labels`. Otherwise the record's label is kept (the
    release's image-level ground truth, used for validation).
    """

    def __init__(
        self,
        records: Sequence[Record],
        transform: Any = None,
        masks: MaskOptions | None = None,
        labels_from_content: bool = False,
        min_region_pixels: int = 1,
    ) -> None:
        if min_region_pixels < 1:
            raise ValueError(f"min_region_pixels must be ≥ 1, got {min_region_pixels}")
        self.records = list(records)
        self.transform = transform
        self.masks = masks or MaskOptions()
        self.labels_from_content = labels_from_content
        self.min_region_pixels = min_region_pixels
        # Set per epoch by training: each sample's augmentation is then seeded by
        # (augment_seed, index), whichever loader worker draws it (None: the transform's
        # own streams).
        self.augment_seed: int | None = None

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
        """Decoded image (BGR uint8), class mask (uint8 {0, 1, 2}), optional edge mask,
        warnings."""
        rec = self.records[index]
        image = read_image(rec.image)
        h, w = image.shape[:2]
        notes: list[str] = []
        # label 0: authentic for the binary tasks; the three-class task still reads a
        # given mask (an image listed authentic may carry desensitised regions)
        if rec.mask is not None and (rec.label != 0 or self.masks.nclass != 1):
            classes, note = read_classes(
                rec.mask, (h, w), self.masks.threshold, self.masks.size_policy
            )
            if note:
                notes.append(note)
        else:
            classes = np.zeros((h, w), np.uint8)
        edge = None
        if rec.edge is not None:
            edge, note = read_mask(rec.edge, (h, w), 1, 0, self.masks.size_policy)
            if note:
                notes.append(note)
        return image, classes, edge, notes

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        try:
            image, classes, edge, notes = self.load(index)
        except BadInputError as exc:
            return {"error": exc.reason, "path": exc.path, "index": index}
        except (OSError, ValueError) as exc:
            return {"error": str(exc), "path": rec.image, "index": index}
        for note in notes:
            warnings.warn(note, stacklevel=2)
        size = image.shape[:2]
        if not self.labels_from_content:  # evaluation: the image's label, before resizing
            evaluation = sample_labels(classes, rec.binary_label, self.masks.desensitised)
        if self.transform is not None:
            if self.augment_seed is not None:
                seed_pipeline(self.transform, (self.augment_seed, index))
            targets = {"image": image, "mask": classes}
            if edge is not None:
                targets["edge"] = edge
            out = self.transform(**targets)
            image, classes, edge = out["image"], out["mask"], out.get("edge")
        if self.labels_from_content:
            labels = sample_labels(
                classes,
                rec.binary_label,
                self.masks.desensitised,
                from_content=True,
                min_region_pixels=self.min_region_pixels,
            )
            classes = labels.classes
            if labels.label <= 0:
                edge = None  # nothing manipulated left: no edge either
        else:
            labels = evaluation  # the label of the whole image; the mask as transformed
        h, w = image.shape[:2]
        edge_size = edge_map_size(h, w)
        if self.masks.nclass == 1:
            binary = binary_from_classes(classes, self.masks.desensitised)
            positive = binary == 1
            mask_t = torch.from_numpy(binary).float().unsqueeze(0)
        else:
            positive = classes > 0
            mask_t = torch.from_numpy(np.ascontiguousarray(classes)).long()
        if edge is None:
            edge = edge_from_mask(positive, edge_size, self.masks.edge_thickness)
            if self.masks.nclass == 1 and self.masks.desensitised == "ignore":
                band = edge_ignore_band(classes, edge_size, self.masks.edge_thickness)
                edge[(band > 0) & (edge == 0)] = IGNORE
        else:
            edge = reduce_binary(edge, edge_size)
        return {
            "image": normalize_bgr(image),
            "mask": mask_t,
            "edge": torch.from_numpy(edge).float().unsqueeze(0),
            "label": torch.tensor(labels.label, dtype=torch.long),
            "type": torch.tensor(rec.label if labels.label > 0 else labels.label, dtype=torch.long),
            "image_class": torch.tensor(labels.image_class, dtype=torch.long),
            "path": rec.image,
            "size": torch.tensor(size, dtype=torch.long),
            "index": index,
        }


def collate_samples(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good samples; report the bad ones under ``skipped`` as (path, reason)
    and their dataset rows under ``skipped_rows`` (a padded DDP shard repeats a row: the
    row, not the path, says whether it was counted already)."""
    good = [b for b in batch if "error" not in b]
    bad = [b for b in batch if "error" in b]
    skipped = [(b["path"], b["error"]) for b in bad]
    rows = [b.get("index", -1) for b in bad]
    if not good:
        return {"skipped": skipped, "skipped_rows": rows, "count": 0}
    out = default_collate(good)
    out["skipped"] = skipped
    out["skipped_rows"] = rows
    out["count"] = len(good)
    return out
