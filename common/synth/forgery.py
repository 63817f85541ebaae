"""Synthetic forgeries from authentic photographs, for demos and tests.

No public forgery dataset can be fetched here, so we make one: splicing (a region of
another photo pasted with feathered edges, optional colour matching), copy-move (a region
of the same photo moved, rotated and scaled), removal (OpenCV inpainting), and, for the
three-class task, desensitisation (mosaic, heavy blur, or a solid cover: class 2).
Regions are random polygons or blobs of varied size, or, where COCO annotations are
given, real object outlines (as DEFACTO and tampCOCO were made). Every image, authentic
ones too, then goes through the same post-processing (``common.synth.post``), so the
task is not solved by compression traces alone. Everything is deterministic from the
random generator a sample is given.

Masks are exact before post-processing: pixels outside the mask are untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import cv2
import numpy as np

from common.synth.photos import ArrayPool, PhotoPool
from common.synth.post import PostConfig, finish, maybe_first_compression, recompress

# Release convention for manipulation types in list files.
TYPE_COPY_MOVE, TYPE_SPLICING, TYPE_REMOVAL = 1, 2, 3
MANIPULATIONS = ("splicing", "copy_move", "removal")
DESENSITISATIONS = ("mosaic", "blur", "cover")

# ----------------------------------------------------------------------------- regions

CropBox = tuple[int, int, int, bool]  # y, x, side, flipped


def random_crop_box(shape: tuple[int, ...], rng: np.random.Generator) -> CropBox:
    """A random square at a random scale (35–100 % of the short side), maybe flipped."""
    h, w = shape[:2]
    side = max(1, int(min(h, w) * rng.uniform(0.35, 1.0)))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return y, x, side, bool(rng.random() < 0.5)


def apply_crop(image: np.ndarray, box: CropBox, size: int, nearest: bool = False) -> np.ndarray:
    y, x, side, flipped = box
    crop = image[y : y + side, x : x + side]
    if flipped:
        crop = crop[:, ::-1]
    method = cv2.INTER_NEAREST if nearest else cv2.INTER_AREA
    return cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=method)


def random_crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop at a random scale, randomly flipped, resized to ``size``."""
    return apply_crop(photo, random_crop_box(photo.shape, rng), size)


def random_region(
    size: int,
    rng: np.random.Generator,
    area: tuple[float, float] = (0.03, 0.2),
    kind: str | None = None,
) -> np.ndarray:
    """A binary (uint8 0/1) region: a random star-shaped polygon or a smooth blob."""
    kind = kind or ("polygon" if rng.random() < 0.5 else "blob")
    target = rng.uniform(*area) * size * size
    radius = np.sqrt(target / np.pi)
    cy, cx = rng.uniform(radius, size - radius, 2)
    mask = np.zeros((size, size), np.uint8)
    if kind == "rectangle":
        ratio = rng.uniform(0.4, 2.5)
        hh, ww = np.sqrt(target / ratio) / 2, np.sqrt(target * ratio) / 2
        y0, y1 = int(max(0, cy - hh)), int(min(size, cy + hh))
        x0, x1 = int(max(0, cx - ww)), int(min(size, cx + ww))
        mask[y0:y1, x0:x1] = 1
    elif kind == "polygon":
        n = int(rng.integers(5, 12))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = radius * rng.uniform(0.6, 1.4, n)
        pts = np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], 1)
        cv2.fillPoly(mask, [np.round(pts).astype(np.int32)], 1)
    else:
        for _ in range(int(rng.integers(2, 5))):
            oy, ox = rng.normal(0, radius * 0.4, 2)
            axes = (int(radius * rng.uniform(0.4, 1.0)), int(radius * rng.uniform(0.4, 1.0)))
            cv2.ellipse(
                mask, (int(cx + ox), int(cy + oy)), axes, rng.uniform(0, 180), 0, 360, 1, -1
            )
    if not mask.any():
        mask[int(cy), int(cx)] = 1
    return mask


def object_mask(shape: tuple[int, ...], parts: Sequence[np.ndarray]) -> np.ndarray:
    """An annotated object's outline polygons filled, at the photo's size (uint8 0/1)."""
    mask = np.zeros(shape[:2], np.uint8)
    cv2.fillPoly(mask, [np.round(p).astype(np.int32) for p in parts], 1)
    return mask


def object_in_crop(
    photo_shape: tuple[int, ...],
    objects: Sequence[Sequence[np.ndarray]],
    box: CropBox,
    size: int,
    rng: np.random.Generator,
    area: tuple[float, float] = (0.005, 0.4),
) -> np.ndarray | None:
    """The outline of one of the photo's objects inside the host crop, when one covers
    an ``area`` share of it (tried in a random order); None otherwise."""
    for i in rng.permutation(len(objects)):
        mask = apply_crop(object_mask(photo_shape, objects[i]), box, size, nearest=True)
        if area[0] <= mask.mean() <= area[1]:
            return mask
    return None


def _feather(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blend weights that are soft near the border, 1 inside and exactly 0 outside."""
    sigma = rng.uniform(0.5, 2.5)
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)
    return np.clip(soft * 2.0, 0, 1) * mask


def _blend(base: np.ndarray, patch: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha[..., None]
    out = base.astype(np.float32) * (1 - a) + patch.astype(np.float32) * a
    return np.where(a > 0, np.clip(np.round(out), 0, 255), base).astype(np.uint8)


def _match_colour(
    patch: np.ndarray, host: np.ndarray, mask: np.ndarray, strength: float
) -> np.ndarray:
    sel = mask > 0
    p = patch.astype(np.float32)
    for c in range(3):
        pm, ps = p[..., c][sel].mean(), p[..., c][sel].std() + 1e-3
        hm, hs = host[..., c][sel].mean(), host[..., c][sel].std() + 1e-3
        matched = (p[..., c] - pm) / ps * hs + hm
        p[..., c] = (1 - strength) * p[..., c] + strength * matched
    return np.clip(p, 0, 255).astype(np.uint8)


def is_grey(image: np.ndarray) -> bool:
    return bool(
        np.array_equal(image[..., 0], image[..., 1])
        and np.array_equal(image[..., 1], image[..., 2])
    )


def to_grey(image: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)


# ----------------------------------------------------------------------------- manipulations


def splice(
    host: np.ndarray,
    donor: np.ndarray,
    rng: np.random.Generator,
    mask: np.ndarray | None = None,
    colour_match: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste a region of ``donor`` (aligned with ``host``) into ``host`` with feathered
    edges."""
    mask = random_region(host.shape[0], rng) if mask is None else mask
    # the donor carries its own history: another compression and resampling
    donor = recompress(donor, int(rng.integers(50, 90)))
    strength = rng.uniform(0, 0.8) if colour_match is None else colour_match
    if strength > 0:
        donor = _match_colour(donor, host, mask, strength)
    return _blend(host, donor, _feather(mask, rng)), mask


def object_donor(
    donor: np.ndarray,
    parts: Sequence[np.ndarray],
    size: int,
    rng: np.random.Generator,
    area: tuple[float, float] = (0.02, 0.25),
) -> tuple[np.ndarray, np.ndarray] | None:
    """A donor photo warped so that one of its annotated objects lands, scaled, at a
    random place of a ``size``² host: (donor image, the object's region), or None when
    the object cannot be placed."""
    mask = object_mask(donor.shape, parts)
    ys, xs = np.nonzero(mask)
    if len(ys) < 16:
        return None
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    scale = np.sqrt(rng.uniform(*area) * size * size / len(ys))
    scale = min(scale, 0.9 * size / max(y1 - y0, x1 - x0))
    ty = rng.uniform(-scale * y0, size - scale * y1)
    tx = rng.uniform(-scale * x0, size - scale * x1)
    matrix = np.float32([[scale, 0, tx], [0, scale, ty]])
    warped = cv2.warpAffine(donor, matrix, (size, size), flags=cv2.INTER_LINEAR)
    region = cv2.warpAffine(mask, matrix, (size, size), flags=cv2.INTER_NEAREST)
    if region.sum() < 16:
        return None
    return warped, region


def copy_move(
    image: np.ndarray, rng: np.random.Generator, src: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Move a region of the image (``src``, or a random one) elsewhere in it, rotated and
    scaled; the mask marks the destination, as in CASIA-style ground truth."""
    size = image.shape[0]
    for _ in range(20):
        region = random_region(size, rng, area=(0.02, 0.12)) if src is None else src
        ys, xs = np.nonzero(region)
        cy, cx = ys.mean(), xs.mean()
        angle, scale = rng.uniform(-30, 30), rng.uniform(0.8, 1.2)
        dy, dx = rng.uniform(-0.5, 0.5, 2) * size
        matrix = cv2.getRotationMatrix2D((cx, cy), angle, scale)
        matrix[:, 2] += (dx, dy)
        moved = cv2.warpAffine(
            image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        dest = cv2.warpAffine(region, matrix, (size, size), flags=cv2.INTER_NEAREST)
        if dest.sum() > 0.5 * region.sum() and (dest & region).sum() < 0.3 * dest.sum():
            return _blend(image, moved, _feather(dest, rng)), dest
    return splice(image, image[::-1, ::-1].copy(), rng)


def remove(
    image: np.ndarray, rng: np.random.Generator, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Erase a region (``mask``, or a random one) by inpainting (OpenCV Telea or
    Navier–Stokes). An object outline is dilated by 2 px first, as annotations hug it."""
    if mask is None:
        mask = random_region(image.shape[0], rng, area=(0.02, 0.1))
    else:
        mask = cv2.dilate(mask, np.ones((5, 5), np.uint8))
    method = cv2.INPAINT_TELEA if rng.random() < 0.5 else cv2.INPAINT_NS
    filled = cv2.inpaint(image, mask, 5, method)
    return np.where(mask[..., None] > 0, filled, image), mask


def desensitise(
    image: np.ndarray, rng: np.random.Generator, kind: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Hide a region on purpose (class 2): mosaic, heavy blur, or a solid cover."""
    kind = kind or DESENSITISATIONS[int(rng.integers(len(DESENSITISATIONS)))]
    shape = "rectangle" if rng.random() < 0.6 else "polygon"
    mask = random_region(image.shape[0], rng, area=(0.02, 0.12), kind=shape)
    size = image.shape[0]
    if kind == "mosaic":
        block = int(rng.integers(6, 16))
        small = cv2.resize(image, (max(1, size // block),) * 2, interpolation=cv2.INTER_AREA)
        hidden = cv2.resize(small, (size, size), interpolation=cv2.INTER_NEAREST)
    elif kind == "blur":
        hidden = cv2.GaussianBlur(image, (0, 0), rng.uniform(5, 12))
    else:
        colour = rng.integers(0, 256, 3) if rng.random() < 0.5 else np.full(3, rng.integers(0, 40))
        hidden = np.broadcast_to(colour.astype(np.uint8), image.shape).copy()
    return np.where(mask[..., None] > 0, hidden, image), mask


# ----------------------------------------------------------------------------- samples


@dataclass
class SyntheticConfig:
    size: int = 256  # output side
    work_size: int | None = None  # manipulation size before the final resize (default size)
    authentic_ratio: float = 0.4
    desensitise: float = 0.0  # probability that an image also gets a class-2 region
    manipulations: Sequence[str] = MANIPULATIONS
    object_p: float = 0.8  # with COCO outlines: share of regions that follow an object
    post: PostConfig = field(default_factory=PostConfig)
    seed: int = 0


@dataclass
class SyntheticSample:
    image: np.ndarray
    classes: np.ndarray  # 0 pristine, 1 tampered, 2 desensitised
    label: int  # 0 authentic, 1 copy-move, 2 splicing, 3 removal, 4 desensitised only
    kind: str
    encoded: bytes | None = None  # the JPEG file as saved (None: store losslessly)
    photos: tuple[str, ...] = ()  # names of the photographs it was cut from
    region_source: str = ""  # "random" or "object"


def _host_object(
    pool: PhotoPool,
    index: int,
    photo: np.ndarray,
    box: CropBox,
    cfg: SyntheticConfig,
    rng: np.random.Generator,
) -> np.ndarray | None:
    objects = pool.photos[index].objects
    if not objects or rng.random() >= cfg.object_p:
        return None
    return object_in_crop(photo.shape, objects, box, cfg.work_size or cfg.size, rng)


def _spliced(
    pool: PhotoPool,
    host_index: int,
    image: np.ndarray,
    cfg: SyntheticConfig,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray, int, str]:
    work = image.shape[0]
    donor_index, donor_photo = pool.pick(rng, avoid=host_index)
    objects = pool.photos[donor_index].objects
    placed, source = None, "random"
    if objects and rng.random() < cfg.object_p:
        placed = object_donor(donor_photo, objects[int(rng.integers(len(objects)))], work, rng)
        source = "object" if placed is not None else source
    donor, region = placed if placed is not None else (random_crop(donor_photo, work, rng), None)
    if is_grey(image):
        donor = to_grey(donor)
    out, region = splice(image, donor, rng, mask=region)
    return out, region, donor_index, source


def make_sample(
    photos: PhotoPool | Sequence[np.ndarray], cfg: SyntheticConfig, rng: np.random.Generator
) -> SyntheticSample:
    """One synthetic image: a host crop, maybe its first JPEG, maybe a manipulation
    (and a desensitised region), then the shared post-processing."""
    pool = photos if isinstance(photos, PhotoPool) else ArrayPool(photos)
    work = cfg.work_size or cfg.size
    host_index, photo = pool.pick(rng)
    box = random_crop_box(photo.shape, rng)
    image = apply_crop(photo, box, work)
    image, double = maybe_first_compression(image, cfg.post, rng)
    classes = np.zeros((work, work), np.uint8)
    label, kind, used, source = 0, "authentic", [host_index], ""
    if rng.random() >= cfg.authentic_ratio:
        kind = cfg.manipulations[int(rng.integers(len(cfg.manipulations)))]
        if kind == "splicing":
            image, region, donor_index, source = _spliced(pool, host_index, image, cfg, rng)
            used.append(donor_index)
            label = TYPE_SPLICING
        else:
            own = _host_object(pool, host_index, photo, box, cfg, rng)
            source = "random" if own is None else "object"
            if kind == "copy_move":
                image, region = copy_move(image, rng, src=own)
                label = TYPE_COPY_MOVE
            else:
                image, region = remove(image, rng, mask=own)
                label = TYPE_REMOVAL
        classes[region > 0] = 1
    if cfg.desensitise > 0 and rng.random() < cfg.desensitise:
        image, region = desensitise(image, rng)
        classes[region > 0] = 2
        if label == 0:
            label, kind = 4, "desensitised"
    image, classes, encoded = finish(image, classes, cfg.size, cfg.post, rng, double)
    names = tuple(pool.photos[i].name for i in used)
    return SyntheticSample(image, classes, label, kind, encoded, names, source)


def contact_sheet(
    samples: Sequence[tuple[np.ndarray, np.ndarray]], columns: int = 8, thumb: int = 128
) -> np.ndarray:
    """A grid of thumbnails with the mask overlaid (red tampered, blue desensitised) and
    outlined, so a person can check the data at a glance."""
    tiles = []
    for image, classes in samples:
        img = cv2.resize(image, (thumb, thumb), interpolation=cv2.INTER_AREA).astype(np.float32)
        cls = cv2.resize(classes, (thumb, thumb), interpolation=cv2.INTER_NEAREST)
        for c, colour in ((1, (0, 0, 255)), (2, (255, 0, 0))):
            sel = cls == c
            img[sel] = 0.55 * img[sel] + 0.45 * np.array(colour, np.float32)
            contours, _ = cv2.findContours(
                sel.astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE
            )
            cv2.drawContours(img, contours, -1, colour, 1)
        tiles.append(
            cv2.copyMakeBorder(
                img.astype(np.uint8), 2, 2, 2, 2, cv2.BORDER_CONSTANT, value=(255, 255, 255)
            )
        )
    while len(tiles) % columns:
        tiles.append(np.full_like(tiles[0], 255))
    rows = [np.hstack(tiles[i : i + columns]) for i in range(0, len(tiles), columns)]
    return np.vstack(rows)
