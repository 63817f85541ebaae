"""Decoding bad and unusual files, mask encodings, edge targets."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from common.io import BadInputError, read_image, read_mask_raw
from common.masks import (
    binary_from_raw,
    edge_from_mask,
    edge_map_size,
    read_mask,
    three_class_from_raw,
)


def _write(path, array, ext=".png", params=()):
    ok, buf = cv2.imencode(ext, array, list(params))
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def test_reads_bgr_grey_rgba_and_16bit(tmp_path):
    bgr = np.zeros((8, 10, 3), np.uint8)
    bgr[..., 2] = 200  # red in BGR
    assert read_image(_write(tmp_path / "c.png", bgr))[0, 0].tolist() == [0, 0, 200]
    grey = read_image(_write(tmp_path / "g.png", np.full((8, 10), 77, np.uint8)))
    assert grey.shape == (8, 10, 3) and grey[0, 0].tolist() == [77, 77, 77]
    rgba = np.dstack([bgr, np.full((8, 10), 9, np.uint8)])
    assert read_image(_write(tmp_path / "a.png", rgba)).shape == (8, 10, 3)
    deep = read_image(_write(tmp_path / "d.png", np.full((8, 10, 3), 65535, np.uint16)))
    assert deep.dtype == np.uint8 and deep.max() == 255


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty"), (b"hello, not an image", "not a readable image")],
)
def test_bad_files_named(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(BadInputError, match=reason) as err:
        read_image(path)
    assert err.value.path.endswith("bad.jpg")


def test_truncated_jpeg_and_png(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    jpg = _write(tmp_path / "t.jpg", img, ".jpg")
    jpg.write_bytes(jpg.read_bytes()[:-300])
    with pytest.raises(BadInputError, match="truncated JPEG"):
        read_image(jpg)
    png = _write(tmp_path / "t.png", img)
    png.write_bytes(png.read_bytes()[:-100])
    with pytest.raises(BadInputError, match="truncated PNG"):
        read_image(png)


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="not found"):
        read_image(tmp_path / "nope.png")


def test_binary_threshold():
    raw = np.array([[0, 1, 127, 128, 255]], np.uint8)
    assert binary_from_raw(raw).tolist() == [[False, False, False, True, True]]
    assert binary_from_raw(raw, threshold=0).tolist() == [[False, True, True, True, True]]


def test_three_class_encodings():
    index = np.array([[0, 1, 2]], np.uint8)
    assert three_class_from_raw(index).tolist() == [[0, 1, 2]]
    grey = np.array([[0, 255, 128, 250, 120]], np.uint8)
    assert three_class_from_raw(grey).tolist() == [[0, 1, 2, 1, 2]]
    colour = np.array(
        [[[255, 255, 255], [0, 0, 255], [255, 0, 0], [10, 5, 240], [0, 0, 0]]], np.uint8
    )
    assert three_class_from_raw(colour).tolist() == [[0, 1, 2, 1, 0]]


def test_colour_mask_file_read_as_three_class_and_binary(tmp_path):
    colour = np.full((6, 6, 3), 255, np.uint8)
    colour[:3, :3] = (0, 0, 255)
    colour[3:, 3:] = (255, 0, 0)
    path = _write(tmp_path / "gt3_x.png", colour)
    raw = read_mask_raw(path)
    assert raw.ndim == 3
    three, _ = read_mask(path, (6, 6), nclass=3)
    assert three[0, 0] == 1 and three[5, 5] == 2 and three[0, 5] == 0


def test_mask_size_policy(tmp_path):
    path = _write(tmp_path / "m.png", np.full((4, 4), 255, np.uint8))
    mask, note = read_mask(path, (8, 8))
    assert mask.shape == (8, 8) and mask.all() and "resized" in note
    with pytest.raises(BadInputError, match="mask is 4×4 but its image is 8×8"):
        read_mask(path, (8, 8), size_policy="reject")


def test_edge_from_mask_matches_contour():
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 1
    edge = edge_from_mask(mask, edge_map_size(64, 64))
    assert edge.shape == (16, 16)
    assert edge[4, 8] == 1 and edge[8, 4] == 1  # on the square's border
    assert edge[8, 8] == 0 and edge[0, 0] == 0  # inside and far outside
    assert edge_from_mask(np.zeros((64, 64), np.uint8), (16, 16)).sum() == 0


def test_exif_orientation_honoured(tmp_path):
    from PIL import Image

    img = Image.fromarray(np.zeros((10, 30, 3), np.uint8))  # 30 wide, 10 high
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when displayed
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif.tobytes())
    assert read_image(path).shape == (30, 10, 3)
