"""Ground-truth masks: what a mask file means, decided once for every reader.

Every reader (training datasets, inference evaluation, ``--pred-dir``, baselines,
classifier labels) goes through :func:`read_classes`, which decodes a file into class
indices (0 pristine, 1 tampered, 2 desensitised) by looking at its content:

- **colour**: a 3-channel mask with any chromatic pixel (channel spread > 64) is the
  seed's palette (``gt3_*.png``): achromatic pixels (white or black) are background,
  red-dominant pixels tampered, blue-dominant pixels desensitised; green-dominant pixels
  are not part of the palette and are refused with the file named;
- **index**: grey values all in {0, 1, 2} are class indices;
- **seed luma**: the seed's colour masks saved as 8-bit grey (blue 29, red 76, white
  255 background): pixels near 29 or 76 and no black background (so also after JPEG or
  a resize moved or blended the levels); each pixel goes to the nearest level;
- **grey**: anything else is thresholded: value > ``threshold`` (default 127) is
  manipulated; for three classes a manipulated value below 192 is desensitised (the
  {0, 128, 255} convention) and 192 and above is tampered.

A 3-channel mask without chromatic pixels (a white-on-black mask saved as RGB or JPEG)
is read as grey (its luma), except an all-white one: that is the seed's colour mask of an
original image (nothing marked), not "everything manipulated" (a single-channel all-white
mask still means the whole image is manipulated, e.g. a fully generated one). Palette PNGs
whose indices are {0, 1, 2} are read as index masks (:func:`common.data.decode.read_mask_raw`).

Binary tasks turn classes into a binary mask by the ``desensitised`` policy
(:data:`DESENSITISED_POLICIES`): ``positive`` (class 2 is manipulated, the seed's
binary localisation), ``negative`` (class 2 is pristine, the seed's classifier:
"original and mosaic are one kind"), or ``ignore`` (class-2 pixels are :data:`IGNORE`
in the mask, left out of losses and metrics; an image with nothing but class 2 is left
out of the image-level terms).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from common.data.decode import BadInputError, MaskSizeError, read_mask_raw

DEFAULT_MASK_THRESHOLD = 127
# The release's evaluation reads masks as mask / 255 without binarising: any non-zero
# pixel is tampered. Evaluating localisation, we default to it, so the release's lists
# give the release's numbers; training (and the derivative scripts' tasks) keep 127.
RELEASE_MASK_THRESHOLD = 0
RULES_DISAGREE_SHARE = 0.01  # a mask counts as disagreeing above this share of pixels
DEFAULT_EDGE_THICKNESS = 3
MASK_SIZE_POLICIES = ("resize", "reject")  # what a mask reader (and training) may do
# Evaluation may also do what the release does: an image whose mask size differs from its
# map (the image's size) counts for the image level only.
IMAGE_LEVEL_ONLY = "image-level"
EVALUATION_MASK_SIZE_POLICIES = (IMAGE_LEVEL_ONLY, *MASK_SIZE_POLICIES)
MASK_ENCODINGS = ("colour", "index", "seed-luma", "grey")
DESENSITISED_POLICIES = ("positive", "negative", "ignore")
IGNORE = 255  # binary-mask value of pixels left out of losses and metrics
# The desensitised policy each kind of task starts from (docs/data-formats.md says why): the seed's
# binary localisation merges tampered and desensitised; its classifier does not.
LOCALIZATION_DESENSITISED = "positive"
CLASSIFIER_DESENSITISED = "negative"

# A pixel whose largest and smallest channel differ by more than this is coloured.
# JPEG chroma noise on white, black or grey stays far below it.
_CHROMA_SPREAD = 64
# Grey three-level masks: manipulated values at or above this are tampered (255), below
# it desensitised (128).
_GREY_TAMPERED_FROM = 192
# How far JPEG or resampling may move a seed luma level (and what counts as black).
_SEED_LUMA_TOLERANCE = 12
# Lossy seed-luma masks: this share of their non-white pixels lies near 29 or 76.
_SEED_LUMA_SHARE = 0.6
# ... and at least this many of them (a 3×3 patch; fewer is a speck or an edge's blur)
_SEED_LUMA_MIN_PIXELS = 9
# A grey mask whose marks all lie at or below the threshold reads as empty: said when at
# least this many pixels are brighter than this level (JPEG noise on black stays below).
_FAINT_MARK_LEVEL = 32
_FAINT_MARK_MIN_PIXELS = 9


@dataclass(frozen=True)
class MaskOptions:
    """How masks are read: classes, grey threshold, edge width, size policy."""

    nclass: int = 1
    threshold: int = DEFAULT_MASK_THRESHOLD
    edge_thickness: int = DEFAULT_EDGE_THICKNESS
    size_policy: str = "resize"  # or "reject"; evaluation also "image-level"
    desensitised: str = "positive"  # binary tasks: positive | negative | ignore

    def __post_init__(self) -> None:
        check_policy(self.desensitised)
        if self.size_policy not in EVALUATION_MASK_SIZE_POLICIES:
            raise ValueError(
                f"size_policy must be one of {EVALUATION_MASK_SIZE_POLICIES}, "
                f"got {self.size_policy!r}"
            )


def check_policy(desensitised: str) -> str:
    if desensitised not in DESENSITISED_POLICIES:
        raise ValueError(
            f"desensitised must be one of {', '.join(DESENSITISED_POLICIES)}; got {desensitised!r}"
        )
    return desensitised


def _is_chromatic(raw: np.ndarray) -> np.ndarray:
    spread = raw.max(axis=2).astype(np.int16) - raw.min(axis=2).astype(np.int16)
    return spread > _CHROMA_SPREAD


def _grey_of(raw: np.ndarray) -> np.ndarray:
    return raw if raw.ndim == 2 else cv2.cvtColor(raw, cv2.COLOR_BGR2GRAY)


def _is_seed_luma(counts: np.ndarray) -> bool:
    """The seed's colour masks saved as grey (white 255 background, red 76, blue 29)
    (``counts``: the histogram). Exactly those levels, or, after JPEG or resampling
    moved or blended them: (nearly) no black, which is the background of every plain
    grey mask (and the region of an inverted one), and most non-white pixels near 76 or
    29 rather than spread over the grey range (as a white mask with thin black lines is
    after an area resize). The region may be small (a forged word at 512² is a few
    hundred pixels), but at least a 3×3 patch: a white grey mask with a speck or thin
    anti-aliased mark puts a few pixels near those levels too, and an all-white mask
    (nothing near them) stays grey."""
    present = np.flatnonzero(counts)
    if set(present.tolist()) <= {29, 76, 255} and (counts[29] or counts[76]):
        return True
    t = _SEED_LUMA_TOLERANCE
    n = counts.sum()
    near_black = counts[: t + 1].sum()
    regions = counts[76 - t : 76 + t + 1].sum() + counts[29 - t : 29 + t + 1].sum()
    non_white = counts[:200].sum()
    return bool(
        regions >= _SEED_LUMA_MIN_PIXELS
        and near_black <= 0.001 * n
        and regions >= _SEED_LUMA_SHARE * non_white
    )


def mask_encoding(raw: np.ndarray) -> str:
    """Which of :data:`MASK_ENCODINGS` a decoded mask (H×W or H×W×3 BGR uint8) uses."""
    if raw.ndim == 3 and _is_chromatic(raw).any():
        return "colour"
    grey = _grey_of(raw)
    counts = np.bincount(grey.ravel(), minlength=256)
    present = set(np.flatnonzero(counts).tolist())
    if present <= {0, 1, 2}:
        return "index"
    if _is_seed_luma(counts):
        return "seed-luma"
    if raw.ndim == 3 and present == {255}:
        return "colour"  # an all-white colour file: the seed's mask of an original image
    return "grey"


def _colour_classes(raw: np.ndarray, where: str) -> np.ndarray:
    """Seed palette: coloured pixels are red-dominant (tampered) or blue-dominant
    (desensitised); a pixel whose green leads red and blue by more than the chroma
    spread is not part of the palette. Colours between (JPEG ringing, anti-aliasing)
    go to the nearer of red and blue."""
    chromatic = _is_chromatic(raw)
    b, g, r = (raw[..., i].astype(np.int16) for i in range(3))
    green = chromatic & (g - np.maximum(r, b) > _CHROMA_SPREAD)
    if green.any():
        y, x = np.argwhere(green)[0]
        pb, pg, pr = raw[y, x].tolist()
        raise BadInputError(
            where,
            f"colour mask has a pixel outside the palette at (x={x}, y={y}): BGR ({pb}, "
            f"{pg}, {pr}); expected white or black background, red = tampered, "
            "blue = desensitised",
        )
    classes = np.zeros(raw.shape[:2], np.uint8)
    classes[chromatic & (r >= b)] = 1
    classes[chromatic & (r < b)] = 2
    return classes


def _seed_luma_classes(grey: np.ndarray) -> np.ndarray:
    """Nearest seed level: ≥ 166 background (white), 53–165 tampered (76), < 53
    desensitised (29); the cut points lie halfway between the levels."""
    return np.where(grey >= 166, 0, np.where(grey >= 53, 1, 2)).astype(np.uint8)


def decode_classes(
    raw: np.ndarray, threshold: int = DEFAULT_MASK_THRESHOLD, where: str = "mask"
) -> np.ndarray:
    """Class indices (uint8 in {0, 1, 2}) of a decoded mask, by its encoding (see the
    module docstring). ``where`` names the file in errors."""
    encoding = mask_encoding(raw)
    if encoding == "colour":
        return _colour_classes(raw, where)
    grey = _grey_of(raw)
    if encoding == "index":
        return grey.astype(np.uint8, copy=True)
    if encoding == "seed-luma":
        return _seed_luma_classes(grey)
    manipulated = grey > threshold
    return np.where(manipulated, np.where(grey >= _GREY_TAMPERED_FROM, 1, 2), 0).astype(np.uint8)


def binary_from_classes(classes: np.ndarray, desensitised: str = "positive") -> np.ndarray:
    """Binary mask (uint8) of a class mask under the ``desensitised`` policy: {0, 1}, or
    {0, 1, :data:`IGNORE`} with ``ignore``."""
    if desensitised == "positive":
        return (classes > 0).astype(np.uint8)
    binary = (classes == 1).astype(np.uint8)
    if check_policy(desensitised) == "ignore":
        binary[classes == 2] = IGNORE
    return binary


def image_label(record_label: int, classes: np.ndarray, desensitised: str) -> int:
    """Image-level ground truth of a labelled image under the ``desensitised`` policy.

    The record's label stands (the release's rule, also for a manipulated image whose
    mask is empty), except that an image whose mask shows desensitised pixels and no
    tampered one is authentic (``negative``) or left out (−1, ``ignore``)."""
    if record_label <= 0 or check_policy(desensitised) == "positive":
        return record_label
    if (classes == 1).any() or not (classes == 2).any():
        return record_label
    return 0 if desensitised == "negative" else -1


def image_class(label: int, classes: np.ndarray) -> int:
    """0 authentic, 1 tampered present, 2 desensitised only (the 3-class image target);
    an unlabelled image keeps −1. Independent of the binary policy."""
    if label < 0 and not (classes > 0).any():
        return label
    if (classes == 1).any():
        return 1
    if (classes == 2).any():
        return 2
    return 0 if label <= 0 else 1


@dataclass(frozen=True)
class SampleLabels:
    """A sample's labels as its (transformed) mask shows them."""

    label: int  # 1 manipulated, 0 authentic, −1 left out of the image terms / unlabelled
    image_class: int  # 0 authentic, 1 tampered, 2 desensitised only (−1 unlabelled)
    classes: np.ndarray  # the class mask, with slivers below min_region_pixels removed


def sample_labels(
    classes: np.ndarray,
    record_label: int,
    desensitised: str = "positive",
    from_content: bool = False,
    min_region_pixels: int = 1,
) -> SampleLabels:
    """Labels of a sample whose class mask is ``classes``.

    ``from_content=True`` (training): the sample is manipulated when at least
    ``min_region_pixels`` of its mask pixels are (the pixels that count as manipulated
    under ``desensitised``, counted after crop/resize, at the training size), whatever
    the list says, so a crop that misses the region, or a resize that makes it vanish,
    trains as authentic (with ``ignore``: left out when only desensitised pixels remain).
    A region smaller than that but not empty is removed from the mask, so the sample is
    consistently authentic. ``from_content=False`` (evaluation) keeps the record's label,
    adjusted by :func:`image_label`.
    """
    if not from_content or record_label < 0:
        label = image_label(record_label, classes, desensitised)
        return SampleLabels(label, image_class(label, classes), classes)
    counted = classes > 0 if desensitised == "positive" else classes == 1
    count = int(np.count_nonzero(counted))
    if 0 < count < min_region_pixels:
        classes = np.where(counted, 0, classes).astype(np.uint8)
        count = 0
    # desensitised slivers too (they decide the 3-class image target and ``ignore``)
    if 0 < np.count_nonzero(classes == 2) < min_region_pixels:
        classes = np.where(classes == 2, 0, classes).astype(np.uint8)
    if count:
        label = 1
    elif desensitised == "ignore" and (classes == 2).any():
        label = -1
    else:
        label = 0
    return SampleLabels(label, image_class(label, classes), classes)


def read_classes(
    path: str | Path,
    image_shape: tuple[int, int],
    threshold: int = DEFAULT_MASK_THRESHOLD,
    size_policy: str = "resize",
) -> tuple[np.ndarray, str | None]:
    """Class mask (uint8 {0, 1, 2}) of ``path`` for an image of ``image_shape`` (H, W).

    Returns the mask and a warning string when it had to be resized (nearest), else
    None. ``size_policy="reject"`` raises instead of resizing.
    """
    if size_policy not in MASK_SIZE_POLICIES:
        raise ValueError(f"size_policy must be one of {MASK_SIZE_POLICIES}, got {size_policy!r}")
    classes, faint = decode_mask_file(path, threshold)
    classes, resized = fit_to_image(classes, path, image_shape, size_policy)
    return classes, "; ".join(n for n in (faint, resized) if n) or None


def decode_mask_file(
    path: str | Path, threshold: int = DEFAULT_MASK_THRESHOLD
) -> tuple[np.ndarray, str | None]:
    """A mask file's classes (uint8 {0, 1, 2}) at the file's own size, and a warning when
    its grey marks all fell at or below ``threshold`` (see :func:`faint_marks_note`)."""
    raw = read_mask_raw(path, keep_channels=True)
    classes = decode_classes(raw, threshold, str(path))
    return classes, faint_marks_note(raw, classes, threshold, path)


def faint_marks_note(
    raw: np.ndarray, classes: np.ndarray, threshold: int, path: str | Path
) -> str | None:
    """Why a grey mask with visible marks decoded as empty, or None.

    Why: a mask drawn in a dim grey (say 100 on black) is manipulated where it is drawn
    under the release's evaluation (any non-zero pixel) but empty under training's
    threshold of 127; nothing said so, and such rows trained as "manipulated, nowhere"."""
    if threshold <= 0 or classes.any() or mask_encoding(raw) != "grey":
        return None
    grey = _grey_of(raw)
    marks = int(np.count_nonzero(grey > _FAINT_MARK_LEVEL))
    if marks < _FAINT_MARK_MIN_PIXELS:
        return None
    return (
        f"{path}: its grey marks ({marks} pixels, up to {int(grey.max())}) all lie at or "
        f"below the mask threshold {threshold}: read as an empty mask (a lower "
        "--mask_threshold counts them)"
    )


def size_mismatch(classes: np.ndarray, image_shape: tuple[int, int]) -> str | None:
    """``mask is W×H but its image is W×H`` when the sizes differ, else None."""
    if classes.shape[:2] == tuple(image_shape):
        return None
    got = f"{classes.shape[1]}×{classes.shape[0]}"
    return f"mask is {got} but its image is {image_shape[1]}×{image_shape[0]}"


def fit_to_image(
    classes: np.ndarray, path: str | Path, image_shape: tuple[int, int], size_policy: str
) -> tuple[np.ndarray, str | None]:
    """``classes`` at the image's size: as they are, resized (nearest, with a warning)
    or refused (:class:`MaskSizeError`, ``reject``)."""
    mismatch = size_mismatch(classes, image_shape)
    if mismatch is None:
        return classes, None
    if size_policy == "reject":
        raise MaskSizeError(path, mismatch)
    got = f"{classes.shape[1]}×{classes.shape[0]}"
    resized = cv2.resize(classes, (image_shape[1], image_shape[0]), interpolation=cv2.INTER_NEAREST)
    return (
        resized,
        f"{path}: mask {got} resized (nearest) to the image's {image_shape[1]}×{image_shape[0]}",
    )


def read_mask(
    path: str | Path,
    image_shape: tuple[int, int],
    nclass: int = 1,
    threshold: int = DEFAULT_MASK_THRESHOLD,
    size_policy: str = "resize",
    desensitised: str = "positive",
) -> tuple[np.ndarray, str | None]:
    """A mask for a task: binary (:func:`binary_from_classes`) for ``nclass=1``,
    {0, 1, 2} for ``nclass=3``; plus the resize warning of :func:`read_classes`."""
    classes, warning = read_classes(path, image_shape, threshold, size_policy)
    if nclass == 1:
        return binary_from_classes(classes, desensitised), warning
    return classes, warning


def read_ground_truth(
    record_label: int,
    mask_path: str | Path | None,
    image_shape: tuple[int, int],
    options: MaskOptions,
    notes: list[str] | None = None,
) -> tuple[np.ndarray | None, int]:
    """What an evaluation scores an image against: its mask for the task (None for
    unlabelled or mask-less rows, and for authentic rows of a binary task) and its
    image-level label under the ``desensitised`` policy (:func:`image_label`). The
    three-class task reads the mask of an authentic row too: its desensitised regions
    are classes to score.

    A mask whose size differs from the image is resized (nearest) or refused
    (:class:`MaskSizeError`) as ``options.size_policy`` says; under ``image-level`` (the
    release's rule, binary tasks) the image keeps its label, read from the mask as drawn,
    but no mask: it counts for the image level only. Either adds a line to ``notes``."""
    label = record_label if record_label <= 0 else 1
    if mask_path is None or label < 0 or (label == 0 and options.nclass == 1):
        return None, label
    classes, faint = decode_mask_file(mask_path, options.threshold)
    if faint and notes is not None:
        notes.append(faint)
    mismatch = size_mismatch(classes, image_shape)
    if mismatch and options.size_policy == IMAGE_LEVEL_ONLY and options.nclass == 1:
        # its label from the mask as drawn: a resize could erase a thin region
        if notes is not None:
            notes.append(
                f"{mask_path}: {mismatch}: its label counts, its pixels do not (the release's rule)"
            )
        return None, image_label(label, classes, options.desensitised)
    # a three-class map needs its mask: resized under image-level too
    policy = "resize" if options.size_policy == IMAGE_LEVEL_ONLY else options.size_policy
    classes, note = fit_to_image(classes, mask_path, image_shape, policy)
    if note and notes is not None:
        notes.append(note)
    label = image_label(label, classes, options.desensitised)
    if options.nclass != 1:
        return classes, label
    return binary_from_classes(classes, options.desensitised), label


def edge_map_size(height: int, width: int) -> tuple[int, int]:
    """Size of the network's edge output (c1, after two ceil-halvings) for an input size."""
    return (height + 3) // 4, (width + 3) // 4


def edge_from_mask(
    mask: np.ndarray, out_size: tuple[int, int], thickness: int = DEFAULT_EDGE_THICKNESS
) -> np.ndarray:
    """Edge target: contours of the manipulated region drawn ``thickness`` px wide at the
    mask's resolution, then reduced to ``out_size`` (H, W) and binarised (any coverage).
    """
    binary = (mask > 0).astype(np.uint8)
    canvas = np.zeros_like(binary)
    if binary.any():
        contours, _ = cv2.findContours(binary, cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(canvas, contours, -1, 1, thickness)
    return reduce_binary(canvas, out_size)


def edge_ignore_band(
    classes: np.ndarray, out_size: tuple[int, int], thickness: int = DEFAULT_EDGE_THICKNESS
) -> np.ndarray:
    """Where the edge target says nothing under the ``ignore`` policy: the desensitised
    regions and a ``thickness`` band around them, at ``out_size`` (uint8 0/1), so their
    boundaries are neither edge nor "not edge"."""
    region = (classes == 2).astype(np.uint8)
    if not region.any():
        return np.zeros(out_size, np.uint8)
    kernel = np.ones((2 * thickness + 1, 2 * thickness + 1), np.uint8)
    return reduce_binary(cv2.dilate(region, kernel), out_size)


def reduce_binary(mask: np.ndarray, out_size: tuple[int, int]) -> np.ndarray:
    """A binary map reduced to ``out_size`` (H, W) by area and re-binarised (any
    coverage counts, so thin edges survive the reduction)."""
    if mask.shape != tuple(out_size):
        mask = cv2.resize(
            (mask > 0).astype(np.float32), (out_size[1], out_size[0]), interpolation=cv2.INTER_AREA
        )
    return (mask > 0).astype(np.uint8)


def rules_disagree(raw: np.ndarray, share: float = RULES_DISAGREE_SHARE) -> bool:
    """Whether the release's rule (``> 0``) and ours (``> 127``) read a grey mask
    differently on more than ``share`` of its pixels (JPEG-saved or anti-aliased ground
    truth); other encodings do not depend on the threshold."""
    if mask_encoding(raw) != "grey":
        return False
    grey = _grey_of(raw)
    differ = (grey > RELEASE_MASK_THRESHOLD) != (grey > DEFAULT_MASK_THRESHOLD)
    return bool(differ.mean() > share)


def count_rule_disagreements(mask_paths: list[str | Path]) -> tuple[int, int]:
    """(masks on which the two grey rules disagree, masks read); unreadable masks are
    left out (the evaluation reports them itself)."""
    disagree = checked = 0
    for path in mask_paths:
        try:
            raw = read_mask_raw(path, keep_channels=True)
        except BadInputError:
            continue
        checked += 1
        disagree += rules_disagree(raw)
    return disagree, checked
