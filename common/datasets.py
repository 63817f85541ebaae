"""The dataset every script uses: records → (image, mask, edge mask, label, path).

A sample that cannot be loaded does not raise: it comes back as an error entry, which
:func:`collate_samples` drops from the batch and reports under ``skipped`` so the
training/evaluation loop can count and log it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from common.io import BadInputError, read_image
from common.masks import (
    DEFAULT_EDGE_THICKNESS,
    DEFAULT_MASK_THRESHOLD,
    edge_from_mask,
    edge_map_size,
    read_mask,
    reduce_binary,
)
from common.sources import Record
from common.transforms import normalize_bgr


@dataclass
class MaskOptions:
    """How masks are read: classes, binarisation threshold, edge width, size policy."""

    nclass: int = 1
    threshold: int = DEFAULT_MASK_THRESHOLD
    edge_thickness: int = DEFAULT_EDGE_THICKNESS
    size_policy: str = "resize"  # or "reject"


class ForgeryDataset(Dataset):
    """Images with masks, edge masks and labels, from any source's records.

    Items are dicts: ``image`` (float 3×H×W, normalised BGR), ``mask`` (float 1×H×W in
    {0, 1} for binary, int64 H×W in {0, 1, 2} for three classes), ``edge`` (float
    1×⌈H/4⌉×⌈W/4⌉), ``label`` (0/1, −1 unlabelled), ``type`` (the list's label),
    ``path``, ``size`` (original H, W) and ``index``.
    """

    def __init__(
        self,
        records: Sequence[Record],
        transform: Any = None,
        masks: MaskOptions | None = None,
    ) -> None:
        self.records = list(records)
        self.transform = transform
        self.masks = masks or MaskOptions()

    def __len__(self) -> int:
        return len(self.records)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, list[str]]:
        """Decoded image (BGR uint8), mask (uint8 classes), optional edge mask, warnings."""
        rec = self.records[index]
        image = read_image(rec.image)
        h, w = image.shape[:2]
        notes: list[str] = []
        if rec.mask is not None and rec.label != 0:
            mask, note = read_mask(
                rec.mask, (h, w), self.masks.nclass, self.masks.threshold, self.masks.size_policy
            )
            if note:
                notes.append(note)
        else:
            mask = np.zeros((h, w), np.uint8)
        edge = None
        if rec.edge is not None:
            edge, note = read_mask(rec.edge, (h, w), 1, 0, self.masks.size_policy)
            if note:
                notes.append(note)
        return image, mask, edge, notes

    def __getitem__(self, index: int) -> dict[str, Any]:
        rec = self.records[index]
        try:
            image, mask, edge, notes = self.load(index)
        except BadInputError as exc:
            return {"error": exc.reason, "path": exc.path, "index": index}
        except (OSError, ValueError) as exc:
            return {"error": str(exc), "path": rec.image, "index": index}
        for note in notes:
            warnings.warn(note, stacklevel=2)
        size = image.shape[:2]
        if self.transform is not None:
            targets = {"image": image, "mask": mask}
            if edge is not None:
                targets["edge"] = edge
            out = self.transform(**targets)
            image, mask, edge = out["image"], out["mask"], out.get("edge")
        h, w = image.shape[:2]
        edge_size = edge_map_size(h, w)
        if edge is None:
            edge = edge_from_mask(mask, edge_size, self.masks.edge_thickness)
        else:
            edge = reduce_binary(edge, edge_size)
        label = rec.binary_label
        if self.masks.nclass == 1:
            mask_t = torch.from_numpy(np.ascontiguousarray(mask)).float().unsqueeze(0)
        else:
            mask_t = torch.from_numpy(np.ascontiguousarray(mask)).long()
        return {
            "image": normalize_bgr(image),
            "mask": mask_t,
            "edge": torch.from_numpy(edge).float().unsqueeze(0),
            "label": torch.tensor(label, dtype=torch.long),
            "type": torch.tensor(rec.label, dtype=torch.long),
            "path": rec.image,
            "size": torch.tensor(size, dtype=torch.long),
            "index": index,
        }


def collate_samples(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good samples; report the bad ones under ``skipped`` as (path, reason)."""
    good = [b for b in batch if "error" not in b]
    skipped = [(b["path"], b["error"]) for b in batch if "error" in b]
    if not good:
        return {"skipped": skipped, "count": 0}
    out = default_collate(good)
    out["skipped"] = skipped
    out["count"] = len(good)
    return out
