"""Decoding bad and unusual files, mask encodings, edge targets."""

from __future__ import annotations

import re

import cv2
import numpy as np
import pytest

from common.data.decode import BadInputError, read_image, read_mask_raw
from common.data.masks import (
    decode_classes,
    edge_from_mask,
    edge_map_size,
    mask_encoding,
    read_mask,
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


def test_grey_threshold_binary_and_three_class():
    raw = np.array([[0, 1, 127, 128, 255]], np.uint8)
    assert mask_encoding(raw) == "grey"
    assert (decode_classes(raw) > 0).tolist() == [[False, False, False, True, True]]
    assert (decode_classes(raw, threshold=0) > 0).tolist() == [[False, True, True, True, True]]
    grey = np.array([[0, 255, 128, 250, 120, 130]], np.uint8)
    # ≤ threshold pristine; above it 128-ish desensitised, 255-ish tampered
    assert decode_classes(grey).tolist() == [[0, 1, 2, 1, 0, 2]]
    assert decode_classes(grey, threshold=64).tolist() == [[0, 1, 2, 1, 2, 2]]


def test_index_and_seed_luma_encodings():
    index = np.array([[0, 1, 2]], np.uint8)
    assert mask_encoding(index) == "index" and decode_classes(index).tolist() == [[0, 1, 2]]
    assert decode_classes(np.array([[0, 1]], np.uint8)).tolist() == [[0, 1]]
    luma = np.array([[255, 76, 29, 255]], np.uint8)  # the seed's colours read as grey
    assert mask_encoding(luma) == "seed-luma"
    assert decode_classes(luma).tolist() == [[0, 1, 2, 0]]
    assert mask_encoding(np.array([[255, 76, 29, 0]], np.uint8)) == "grey"  # 0 is not seed


def test_colour_encoding_and_rgb_binary():
    colour = np.array(
        [
            [
                [255, 255, 255],  # white background
                [0, 0, 255],  # red tampered
                [255, 0, 0],  # blue desensitised
                [10, 5, 240],  # JPEG-noisy red
                [0, 0, 0],  # black background
                [128, 128, 255],  # anti-aliased red edge (pink)
                [255, 140, 120],  # light blue edge
                [250, 252, 247],  # JPEG-noisy white
            ]
        ],
        np.uint8,
    )
    assert mask_encoding(colour) == "colour"
    assert decode_classes(colour).tolist() == [[0, 1, 2, 1, 0, 1, 2, 0]]
    rgb_binary = np.array([[[255, 255, 255], [0, 0, 0], [250, 252, 255], [3, 0, 2]]], np.uint8)
    assert mask_encoding(rgb_binary) == "grey"  # no coloured pixel: white-on-black luma
    assert decode_classes(rgb_binary).tolist() == [[1, 0, 1, 0]]


def test_colour_outside_the_palette_is_refused_naming_the_file():
    green = np.full((2, 3, 3), 255, np.uint8)
    green[1, 2] = (0, 200, 0)
    with pytest.raises(BadInputError, match=r"outside the palette at \(x=2, y=1\)") as err:
        decode_classes(green, where="gt3_bad.png")
    assert err.value.path == "gt3_bad.png"


def test_sixteen_bit_masks_keep_small_values(tmp_path):
    index = np.array([[0, 1, 2, 0]], np.uint16)
    assert read_mask_raw(_write(tmp_path / "i16.png", index)).tolist() == [[0, 1, 2, 0]]
    full = np.array([[0, 65535]], np.uint16)
    assert read_mask_raw(_write(tmp_path / "f16.png", full)).tolist() == [[0, 255]]
    eight = np.array([[0, 255]], np.uint16)
    assert read_mask_raw(_write(tmp_path / "e16.png", eight)).tolist() == [[0, 255]]


def test_colour_mask_file_read_as_three_class_and_binary(tmp_path):
    colour = np.full((6, 6, 3), 255, np.uint8)
    colour[:3, :3] = (0, 0, 255)
    colour[3:, 3:] = (255, 0, 0)
    path = _write(tmp_path / "gt3_x.png", colour)
    raw = read_mask_raw(path)
    assert raw.ndim == 3
    three, _ = read_mask(path, (6, 6), nclass=3)
    assert three[0, 0] == 1 and three[5, 5] == 2 and three[0, 5] == 0
    binary, _ = read_mask(path, (6, 6), nclass=1)
    assert binary.sum() == 18 and binary[0, 5] == 0  # the white background is not tampered


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


def _seed_colour_mask(size: int = 64) -> np.ndarray:
    colour = np.full((size, size, 3), 255, np.uint8)
    cv2.circle(colour, (20, 20), 10, (0, 0, 255), -1, cv2.LINE_AA)  # red: tampered
    cv2.rectangle(colour, (36, 36), (56, 56), (255, 0, 0), -1)  # blue: desensitised
    return colour


@pytest.mark.parametrize("quality", [60, 80, 95])
def test_lossy_seed_masks_keep_their_classes(tmp_path, quality):
    """JPEG copies of the seed's colour masks, as colour and as grey (luma), and a
    resized grey copy: white stays background, red tampered, blue desensitised."""
    colour = _seed_colour_mask()
    truth = decode_classes(colour)
    assert (truth == 1).sum() > 250 and (truth == 2).sum() == 21 * 21
    luma = cv2.cvtColor(colour, cv2.COLOR_BGR2GRAY)
    resized = cv2.resize(cv2.resize(luma, (48, 48)), (64, 64), interpolation=cv2.INTER_LINEAR)
    for name, image in (("c.jpg", colour), ("g.jpg", luma), ("r.png", resized)):
        path = tmp_path / name
        params = [cv2.IMWRITE_JPEG_QUALITY, quality] if name.endswith(".jpg") else []
        cv2.imwrite(str(path), image, params)
        classes, _ = read_mask(path, (64, 64), nclass=3)
        agree = (classes == truth).mean()
        assert agree > 0.97, (name, agree)
        assert classes[0, 63] == 0 and classes[20, 20] == 1 and classes[46, 46] == 2


def test_near_white_jpeg_colours_are_not_refused():
    """JPEG ringing can make a near-white pixel lead with green by a level or two."""
    raw = np.full((2, 2, 3), 255, np.uint8)
    raw[0, 0] = (186, 255, 254)
    raw[1, 1] = (0, 0, 255)
    assert decode_classes(raw).tolist() == [[1, 0], [0, 1]]


def test_all_white_colour_file_is_an_empty_seed_mask(tmp_path):
    white = np.full((8, 8, 3), 255, np.uint8)
    path = _write(tmp_path / "gt3_orig.png", white)
    assert read_mask(path, (8, 8), nclass=3)[0].sum() == 0
    grey = _write(tmp_path / "full.png", np.full((8, 8), 255, np.uint8))
    assert read_mask(grey, (8, 8), nclass=1)[0].all()  # one channel: all manipulated


def test_palette_png_indices_and_wide_sixteen_bit(tmp_path):
    from PIL import Image

    index = np.zeros((6, 6), np.uint8)
    index[:2] = 1
    index[4:] = 2
    im = Image.fromarray(index, mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * (256 * 3 - 9))  # VOC colours
    im.save(tmp_path / "voc.png")
    assert read_mask(tmp_path / "voc.png", (6, 6), nclass=3)[0].tolist() == index.tolist()
    swapped = Image.fromarray(index, mode="P")  # entry 0 white: not a label map
    swapped.putpalette([255, 255, 255, 0, 0, 0, 0, 0, 0] + [0] * (256 * 3 - 9))
    swapped.save(tmp_path / "swapped.png")
    decoded = read_mask(tmp_path / "swapped.png", (6, 6), nclass=1)[0]
    assert decoded[0, 0] == 0 and decoded[3, 0] == 1  # index 1 is black there, 0 white
    wide = np.array([[0, 1000, 0]], np.uint16)
    assert read_mask(_write(tmp_path / "w16.png", wide), (1, 3), nclass=1)[0].tolist() == [
        [0, 1, 0]
    ]
    half = np.array([[0, 32768]], np.uint16)  # full-range 16-bit: 128, desensitised
    assert read_mask(_write(tmp_path / "h16.png", half), (1, 2), nclass=3)[0].tolist() == [[0, 2]]
    # a white-on-black mask quantised to a [white, black] palette: read by its colours
    binary = np.zeros((6, 6), np.uint8)
    binary[:3] = 255
    quantised = Image.fromarray(binary).convert("RGB").quantize(2)
    assert quantised.getpalette()[:3] != [0, 0, 0] or True
    quantised.save(tmp_path / "q.png")
    assert read_mask(tmp_path / "q.png", (6, 6), nclass=1)[0].tolist() == (binary > 0).tolist()
    three = np.array([[0, 32768, 65535]], np.uint16)
    assert read_mask(_write(tmp_path / "t16.png", three), (1, 3), nclass=3)[0].tolist() == [
        [0, 2, 1]
    ]


def _bomb(ext: str) -> bytes:
    """A tiny file whose header claims 60000×60000 pixels."""
    import struct
    import zlib

    ok, buf = cv2.imencode(ext, np.zeros((8, 8, 3), np.uint8))
    assert ok
    data = bytearray(buf.tobytes())
    if ext == ".png":  # IHDR: width, height at bytes 16–24, its CRC after the chunk
        data[16:24] = struct.pack(">II", 60000, 60000)
        data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))
    else:  # baseline JPEG: SOF0's height and width
        sof = data.index(b"\xff\xc0")
        data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)
    return bytes(data)


@pytest.mark.parametrize("ext", [".png", ".jpg"])
def test_decompression_bomb_headers_are_refused_in_plain_words(tmp_path, ext):
    from common.data.decode import decode_image, decode_mask_bytes

    data = _bomb(ext)
    assert len(data) < 1000
    with pytest.raises(BadInputError) as caught:
        decode_image(data, "bomb" + ext)
    assert re.fullmatch(r"image too large \(60000×60000 > \d+ pixels\)", caught.value.reason)
    with pytest.raises(BadInputError, match=r"mask too large \(60000×60000"):
        decode_mask_bytes(data, "bomb" + ext)
    path = tmp_path / f"bomb{ext}"
    path.write_bytes(data)
    with pytest.raises(BadInputError, match="image too large") as caught:
        read_image(path)
    assert str(path) in str(caught.value)  # the error names the file


def test_an_image_over_the_limit_after_decoding_is_too_large(tmp_path):
    """Whatever reveals the size (header or decoding), the error has one type."""
    from common.data.decode import TooLargeError, _decode

    data = cv2.imencode(".png", np.zeros((40, 50, 3), np.uint8))[1].tobytes()
    with pytest.raises(TooLargeError, match="image too large"):
        _decode("x.png", data, cv2.IMREAD_COLOR, limit=100)


def test_a_small_region_of_a_jpeg_seed_luma_mask_is_read_as_drawn():
    """A colour mask saved as grey and then as JPEG, its one region 4×4 px of 160×160
    (0.06 %): the region is tampered and the white background pristine (it was read as
    a grey mask: the whole background manipulated and the region not)."""
    mask = np.full((160, 160), 255, np.uint8)
    mask[40:44, 60:64] = 76
    _, buf = cv2.imencode(".jpg", mask, [cv2.IMWRITE_JPEG_QUALITY, 90])
    lossy = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)
    assert not set(np.unique(lossy).tolist()) <= {29, 76, 255}  # JPEG moved the levels
    assert mask_encoding(lossy) == "seed-luma"
    classes = decode_classes(lossy)
    assert (classes[40:44, 60:64] == 1).all() and np.count_nonzero(classes) == 16
    # an all-white single-channel mask still means "all manipulated"
    assert mask_encoding(np.full((8, 8), 255, np.uint8)) == "grey"
    # and a white grey mask with a speck, saved as JPEG, stays grey (a few pixels land
    # near 76 or 29 in the blur of the speck)
    speck = np.full((512, 512), 255, np.uint8)
    speck[200, 300] = 0
    _, buf = cv2.imencode(".jpg", speck, [cv2.IMWRITE_JPEG_QUALITY, 65])
    assert mask_encoding(cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)) == "grey"
