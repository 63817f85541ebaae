"""Decoding images and masks safely: the one place where bad files are judged.

Every failure raises :class:`BadInputError` naming the file and the reason, so batch
jobs can record it and go on.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import cv2
import numpy as np

# Above this many pixels an image is refused rather than risking memory exhaustion.
MAX_PIXELS = int(os.environ.get("MVSS_MAX_PIXELS", 200_000_000))
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")

_JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"IEND"


class BadInputError(ValueError):
    """An input file that cannot be used; ``path`` and ``reason`` say which and why."""

    def __init__(self, path: str | Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason

    def __reduce__(self) -> tuple:  # survives the trip back from a worker process
        return (type(self), (self.path, self.reason))


class TooLargeError(BadInputError):
    """An image or mask over the pixel limit (the server answers 413 for it)."""


class MaskSizeError(BadInputError):
    """A mask whose size differs from its image's (scored at image level only, as the
    release does, where the size policy allows)."""


def _read_bytes(path: str | Path) -> bytes:
    path = Path(path)
    if not path.exists():
        raise BadInputError(path, "file not found")
    if not path.is_file():
        raise BadInputError(path, "not a regular file")
    data = path.read_bytes()
    if not data:
        raise BadInputError(path, "empty file (0 bytes)")
    return data


def _check_complete(path: str | Path, data: bytes) -> None:
    """Refuse truncated JPEG/PNG files, which OpenCV would decode half grey."""
    if data[:3] == b"\xff\xd8\xff" and _JPEG_EOI not in data[-64:].rstrip(b"\x00"):
        raise BadInputError(path, "truncated JPEG (no end-of-image marker)")
    if data[:8] == b"\x89PNG\r\n\x1a\n" and _PNG_IEND not in data[-16:]:
        raise BadInputError(path, "truncated PNG (no IEND chunk)")


def _decode(path: str | Path, data: bytes, flags: int, limit: int | None = None) -> np.ndarray:
    buffer = np.frombuffer(data, dtype=np.uint8)
    try:
        image = cv2.imdecode(buffer, flags)
    except cv2.error as exc:
        raise BadInputError(path, f"cannot decode ({str(exc).strip()[:120]})") from exc
    if image is None or image.size == 0:
        raise BadInputError(path, "not a readable image (unknown format or corrupt data)")
    limit = MAX_PIXELS if limit is None else limit
    if image.shape[0] * image.shape[1] > limit:
        raise TooLargeError(
            path, f"image too large ({image.shape[1]}×{image.shape[0]} > {limit} pixels)"
        )
    return image


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Scale 16-bit or float images to 8-bit; leave 8-bit alone."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return (image >> 8).astype(np.uint8)
    if np.issubdtype(image.dtype, np.floating):
        peak = 1.0 if float(np.nanmax(image)) <= 1.0 else 255.0
        return np.clip(np.nan_to_num(image) * (255.0 / peak), 0, 255).astype(np.uint8)
    return np.clip(image, 0, 255).astype(np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Decode an image as uint8 H×W×3 in **BGR** order (the release's convention).

    Grayscale becomes 3 channels, alpha is dropped, 16-bit is scaled to 8-bit, and EXIF
    orientation is honoured (OpenCV's IMREAD_COLOR does all of this).
    """
    return decode_image(_read_bytes(path), path)


def _pillow():
    """Pillow's Image module, with its own decompression-bomb refusal off: it raises on
    headers over 2 × 89 M pixels before telling their size, which left such files to
    OpenCV's internal error; the toolkit checks every header against its own limit
    (``MVSS_MAX_PIXELS``) before Pillow or OpenCV decodes a pixel."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None
    return Image


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from the file header alone (Pillow reads headers lazily), so a
    decompression bomb is refused before its pixels are allocated; None if unknown."""
    try:
        Image = _pillow()  # noqa: N806 (the module, as Pillow names it)

        with Image.open(io.BytesIO(data)) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception:  # not a format Pillow knows: OpenCV decides below
        return None


def decode_image(data: bytes, name: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """:func:`read_image` for bytes already in memory (an upload); ``name`` is what errors
    call it. Images over ``max_pixels`` (default ``MVSS_MAX_PIXELS``) are refused from
    their header when it can be read, before decoding."""
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    if not data:
        raise BadInputError(name, "empty file (0 bytes)")
    size = header_size(data)
    if size is not None and size[0] * size[1] > limit:
        raise TooLargeError(name, f"image too large ({size[0]}×{size[1]} > {limit} pixels)")
    _check_complete(name, data)
    image = _decode(name, data, cv2.IMREAD_COLOR, limit)
    return np.ascontiguousarray(to_uint8(image))


def _palette_indices(data: bytes) -> np.ndarray | None:
    """The indices of a palette PNG (colour type 3) that is a label map: indices in
    {0, 1, 2} and entry 0 black (VOC-style palettes, which make class 2 green: OpenCV
    would expand them to those colours). Any other palette (a white-on-black mask
    quantised to [white, black], say) is decoded by its colours. None for other files."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or len(data) < 26 or data[25] != 3:
        return None
    try:
        Image = _pillow()  # noqa: N806 (the module, as Pillow names it)

        with Image.open(io.BytesIO(data)) as im:
            if im.mode != "P":
                return None
            palette = im.getpalette() or []
            indices = np.asarray(im, dtype=np.uint8)
    except Exception:  # Pillow cannot read it: OpenCV decides
        return None
    if indices.ndim != 2 or int(indices.max(initial=0)) > 2 or palette[:3] != [0, 0, 0]:
        return None
    return np.ascontiguousarray(indices)


def _wide_to_uint8(mask: np.ndarray) -> np.ndarray:
    """16-bit (or wider) masks: values that fit in 0–255 are kept (class indices, 0/255
    stored as 16-bit); values up to 65535 with a maximum of at least 32768 are full
    range (>> 8: 0/32768/65535 → 0/128/255, and 0/32768 stays 128); a smaller maximum
    is scaled to 255 (a 0/1000 mask is 0/255)."""
    if mask.dtype == np.uint8:
        return mask
    if np.issubdtype(mask.dtype, np.integer):
        peak = int(mask.max(initial=0))
        if peak <= 255:
            return mask.astype(np.uint8)
        if 32768 <= peak <= 65535:
            return (mask.astype(np.uint32) >> 8).astype(np.uint8)
        return np.round(mask.astype(np.float64) * (255.0 / peak)).astype(np.uint8)
    return to_uint8(mask)


def read_mask_raw(path: str | Path, keep_channels: bool = False) -> np.ndarray:
    """Decode a mask keeping its colours (colour masks carry classes): uint8, H×W or
    H×W×3 (BGR). Alpha is dropped; see :func:`_wide_to_uint8` for 16-bit files and
    :func:`_palette_indices` for palette PNGs. A 3-channel file whose channels are equal
    becomes H×W unless ``keep_channels``."""
    return decode_mask_bytes(_read_bytes(path), path, keep_channels=keep_channels)


def decode_mask_bytes(
    data: bytes, name: str | Path, max_pixels: int | None = None, keep_channels: bool = True
) -> np.ndarray:
    """:func:`read_mask_raw` for bytes in memory (an upload); ``name`` is what errors
    call it."""
    if not data:
        raise BadInputError(name, "empty file (0 bytes)")
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    size = header_size(data)
    if size is not None and size[0] * size[1] > limit:
        raise TooLargeError(name, f"mask too large ({size[0]}×{size[1]} > {limit} pixels)")
    _check_complete(name, data)
    indices = _palette_indices(data)
    if indices is not None:
        return indices
    mask = _wide_to_uint8(_decode(name, data, cv2.IMREAD_UNCHANGED, max_pixels))
    if mask.ndim == 3:
        if mask.shape[2] == 4:
            mask = mask[:, :, :3]
        elif mask.shape[2] == 1:
            mask = mask[:, :, 0]
        if (
            not keep_channels
            and mask.ndim == 3
            and np.array_equal(mask[:, :, 0], mask[:, :, 1])
            and np.array_equal(mask[:, :, 1], mask[:, :, 2])
        ):
            mask = mask[:, :, 0]  # grey stored as RGB
    return np.ascontiguousarray(mask)


def read_map_raw(path: str | Path) -> np.ndarray:
    """Decode a predicted probability map as 8-bit levels (H×W, or H×W×3 if coloured):
    16-bit maps span the full range (>> 8) unless their values already fit in 0–255."""
    data = _read_bytes(path)
    _check_complete(path, data)
    level = _decode(path, data, cv2.IMREAD_UNCHANGED)
    if np.issubdtype(level.dtype, np.integer) and level.dtype != np.uint8 and level.max() <= 255:
        level = level.astype(np.uint8)
    level = to_uint8(level)
    if level.ndim == 3:
        level = level[:, :, 0] if level.shape[2] == 1 else level[:, :, :3]
    return np.ascontiguousarray(level)


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write a PNG atomically (temp file + rename), creating folders as needed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, encoded = cv2.imencode(".png", image)
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(encoded.tobytes())
    os.replace(tmp, path)
