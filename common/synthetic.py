"""Synthetic forgeries from authentic photographs, for demos and tests.

No public forgery dataset can be fetched here, so we make one: splicing (a region of
another photo pasted with feathered edges, optional colour matching), copy-move (a region
of the same photo moved, rotated and scaled), removal (OpenCV inpainting), and, for the
three-class task, desensitisation (mosaic, heavy blur, or a solid cover: class 2).
Regions are random polygons or blobs of varied size. Every image, authentic ones too,
then goes through the same post-processing (resize, noise, JPEG re-compression), so
the task is not trivially solved by compression traces alone. Everything is
deterministic from the seed.

Masks are exact before post-processing: pixels outside the mask are untouched.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from common.io import IMAGE_EXTENSIONS, read_image, write_png

# Release convention for manipulation types in list files.
TYPE_COPY_MOVE, TYPE_SPLICING, TYPE_REMOVAL = 1, 2, 3
MANIPULATIONS = ("splicing", "copy_move", "removal")
DESENSITISATIONS = ("mosaic", "blur", "cover")

_BUNDLED = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
)


def bundled_photos() -> list[np.ndarray]:
    """The photographs scikit-image's wheel ships (BGR uint8; nothing is downloaded).
    A fixed set, whatever else is installed, so synthetic data depend on the seed only."""
    import skimage.data as data

    photos = [cv2.cvtColor(getattr(data, name)(), cv2.COLOR_RGB2BGR) for name in _BUNDLED]
    left, right, _ = data.stereo_motorcycle()
    photos += [cv2.cvtColor(left, cv2.COLOR_RGB2BGR), cv2.cvtColor(right, cv2.COLOR_RGB2BGR)]
    return photos


def folder_photos(folder: str | Path) -> list[np.ndarray]:
    """Every readable image in a folder (recursively); unreadable ones are skipped."""
    paths = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    photos = []
    for p in paths:
        try:
            photos.append(read_image(p))
        except ValueError:
            continue
    if len(photos) < 2:
        raise ValueError(f"{folder}: need at least 2 readable photographs, found {len(photos)}")
    return photos


# ----------------------------------------------------------------------------- regions


def random_crop(photo: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random square crop at a random scale, randomly flipped, resized to ``size``."""
    h, w = photo.shape[:2]
    side = int(min(h, w) * rng.uniform(0.35, 1.0))
    y, x = rng.integers(0, h - side + 1), rng.integers(0, w - side + 1)
    crop = photo[y : y + side, x : x + side]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return cv2.resize(np.ascontiguousarray(crop), (size, size), interpolation=cv2.INTER_AREA)


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


def _recompress(image: np.ndarray, quality: int) -> np.ndarray:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    return cv2.imdecode(buf, cv2.IMREAD_COLOR) if ok else image


# ----------------------------------------------------------------------------- manipulations


def splice(
    host: np.ndarray,
    donor: np.ndarray,
    rng: np.random.Generator,
    mask: np.ndarray | None = None,
    colour_match: float | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Paste a region of ``donor`` into ``host`` with feathered edges."""
    mask = random_region(host.shape[0], rng) if mask is None else mask
    # the donor carries its own history: another compression and resampling
    donor = _recompress(donor, int(rng.integers(50, 90)))
    strength = rng.uniform(0, 0.8) if colour_match is None else colour_match
    if strength > 0:
        donor = _match_colour(donor, host, mask, strength)
    return _blend(host, donor, _feather(mask, rng)), mask


def copy_move(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Move a region of the image elsewhere in it (rotated, scaled); the mask marks the
    destination, as in CASIA-style ground truth."""
    size = image.shape[0]
    for _ in range(20):
        src = random_region(size, rng, area=(0.02, 0.12))
        ys, xs = np.nonzero(src)
        cy, cx = ys.mean(), xs.mean()
        angle, scale = rng.uniform(-30, 30), rng.uniform(0.8, 1.2)
        dy, dx = rng.uniform(-0.5, 0.5, 2) * size
        matrix = cv2.getRotationMatrix2D((cx, cy), angle, scale)
        matrix[:, 2] += (dx, dy)
        moved = cv2.warpAffine(
            image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT
        )
        dest = cv2.warpAffine(src, matrix, (size, size), flags=cv2.INTER_NEAREST)
        if dest.sum() > 0.5 * src.sum() and (dest & src).sum() < 0.3 * dest.sum():
            return _blend(image, moved, _feather(dest, rng)), dest
    return splice(image, image[::-1, ::-1].copy(), rng)


def remove(image: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Erase a region by inpainting (OpenCV Telea or Navier–Stokes)."""
    mask = random_region(image.shape[0], rng, area=(0.02, 0.1))
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


def postprocess(
    image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, out_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """The same degradations for every image: resize, mild noise, JPEG re-compression."""
    if image.shape[0] != out_size:
        image = cv2.resize(image, (out_size, out_size), interpolation=cv2.INTER_AREA)
        mask = cv2.resize(mask, (out_size, out_size), interpolation=cv2.INTER_NEAREST)
    if rng.random() < 0.5:
        noise = rng.normal(0, rng.uniform(0.5, 3.0), image.shape)
        image = np.clip(image + noise, 0, 255).astype(np.uint8)
    if rng.random() < 0.8:
        image = _recompress(image, int(rng.integers(70, 96)))
    return image, mask


# ----------------------------------------------------------------------------- dataset


@dataclass
class SyntheticConfig:
    size: int = 256  # output side
    work_size: int | None = None  # manipulation size before the final resize (default size)
    authentic_ratio: float = 0.4
    desensitise: float = 0.0  # probability that an image also gets a class-2 region
    manipulations: Sequence[str] = MANIPULATIONS
    seed: int = 0


@dataclass
class SyntheticSample:
    image: np.ndarray
    classes: np.ndarray  # 0 pristine, 1 tampered, 2 desensitised
    label: int  # 0 authentic, 1 copy-move, 2 splicing, 3 removal, 4 desensitised only
    kind: str


def make_sample(
    photos: Sequence[np.ndarray], cfg: SyntheticConfig, rng: np.random.Generator
) -> SyntheticSample:
    work = cfg.work_size or cfg.size
    host_index = int(rng.integers(len(photos)))
    image = random_crop(photos[host_index], work, rng)
    classes = np.zeros((work, work), np.uint8)
    label, kind = 0, "authentic"
    if rng.random() >= cfg.authentic_ratio:
        kind = cfg.manipulations[int(rng.integers(len(cfg.manipulations)))]
        if kind == "splicing":
            donor_index = (host_index + 1 + int(rng.integers(len(photos) - 1))) % len(photos)
            image, region = splice(image, random_crop(photos[donor_index], work, rng), rng)
            label = TYPE_SPLICING
        elif kind == "copy_move":
            image, region = copy_move(image, rng)
            label = TYPE_COPY_MOVE
        else:
            image, region = remove(image, rng)
            label = TYPE_REMOVAL
        classes[region > 0] = 1
    if cfg.desensitise > 0 and rng.random() < cfg.desensitise:
        image, region = desensitise(image, rng)
        classes[region > 0] = 2
        if label == 0:
            label, kind = 4, "desensitised"
    image, classes = postprocess(image, classes, rng, cfg.size)
    return SyntheticSample(image, classes, label, kind)


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


def generate(
    out: str | Path,
    photos: Sequence[np.ndarray],
    splits: dict[str, int],
    cfg: SyntheticConfig,
    sheet_count: int = 32,
) -> dict[str, Path]:
    """Write ``images/``, ``masks/`` (0/255, manipulated = classes 1 ∪ 2), ``masks3/``
    (index PNG 0/1/2) and, per split, ``<split>.txt`` (binary list: label = manipulation
    type, 0 authentic) and ``<split>3.txt`` (three-class list: label 1 tampered,
    2 desensitised only, 0 authentic), plus ``contact_sheet.png``. Each split has its own
    random stream, so changing one split's size leaves the others unchanged."""
    out = Path(out)
    lists: dict[str, Path] = {}
    sheet: list[tuple[np.ndarray, np.ndarray]] = []
    for split_index, (split, count) in enumerate(splits.items()):
        rng = np.random.default_rng([cfg.seed, split_index])
        lines, lines3 = [], []
        for i in range(count):
            s = make_sample(photos, cfg, rng)
            name = f"{split}_{i:05d}"
            image_rel, mask_rel, mask3_rel = (
                f"images/{name}.jpg",
                f"masks/{name}.png",
                f"masks3/{name}.png",
            )
            ok, buf = cv2.imencode(".jpg", s.image, [cv2.IMWRITE_JPEG_QUALITY, 100])
            if not ok:
                raise OSError(f"JPEG encoding failed for {name}")
            (out / "images").mkdir(parents=True, exist_ok=True)
            (out / image_rel).write_bytes(buf.tobytes())
            if s.label == 0:
                lines.append(f"{image_rel} None 0")
                lines3.append(f"{image_rel} None 0")
            else:
                write_png(out / mask_rel, np.where(s.classes > 0, 255, 0).astype(np.uint8))
                write_png(out / mask3_rel, s.classes)
                lines.append(f"{image_rel} {mask_rel} {s.label if s.label != 4 else 1}")
                lines3.append(f"{image_rel} {mask3_rel} {2 if s.label == 4 else 1}")
            if len(sheet) < sheet_count:
                sheet.append((s.image, s.classes))
        lists[split] = out / f"{split}.txt"
        lists[split].write_text("\n".join(lines) + "\n")
        if cfg.desensitise > 0:
            (out / f"{split}3.txt").write_text("\n".join(lines3) + "\n")
    if sheet:
        write_png(out / "contact_sheet.png", contact_sheet(sheet))
    return lists
