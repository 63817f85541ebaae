"""The synthetic forgery generator: determinism, exact masks, classes, contact sheet."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import make_synthetic_data
from common.sources import read_list_file
from common.synthetic import (
    SyntheticConfig,
    bundled_photos,
    copy_move,
    desensitise,
    generate,
    random_crop,
    random_region,
    remove,
    splice,
)


@pytest.fixture(scope="module")
def photos():
    return [cv2.resize(p, (160, 160)) for p in bundled_photos()[:4]]


def test_bundled_photos_offline():
    photos = bundled_photos()
    assert len(photos) >= 9
    assert all(p.ndim == 3 and p.shape[2] == 3 and p.dtype == np.uint8 for p in photos)


def _changed(a, b):
    return np.any(a != b, axis=2)


@pytest.mark.parametrize("seed", range(5))
def test_masks_match_manipulated_pixels(photos, seed):
    rng = np.random.default_rng(seed)
    host = random_crop(photos[0], 96, rng)
    donor = random_crop(photos[1], 96, rng)
    for out, mask in (
        splice(host, donor, rng),
        copy_move(host, rng),
        remove(host, rng),
        desensitise(host, rng),
    ):
        changed = _changed(out, host)
        assert not np.any(changed & (mask == 0)), "a pixel outside the mask changed"
        assert changed[mask > 0].mean() > 0.5


def test_splice_interior_is_donor_pixels(photos):
    rng = np.random.default_rng(3)
    host = random_crop(photos[0], 96, rng)
    donor = random_crop(photos[1], 96, rng)
    mask = np.zeros((96, 96), np.uint8)
    mask[20:70, 20:70] = 1
    out, got = splice(host, donor, rng, mask=mask, colour_match=0.0)
    assert np.array_equal(got, mask)
    inner = out[35:55, 35:55].astype(int)
    # the donor was re-compressed, so compare loosely against the original donor
    assert np.abs(inner - donor[35:55, 35:55].astype(int)).mean() < 12
    assert np.abs(inner - host[35:55, 35:55].astype(int)).mean() > 12


def test_region_shapes_and_sizes():
    rng = np.random.default_rng(0)
    for kind in ("polygon", "blob", "rectangle"):
        m = random_region(128, rng, area=(0.05, 0.1), kind=kind)
        assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 1}
        assert 0.01 < m.mean() < 0.3


def test_generate_deterministic_all_classes_and_sheet(tmp_path, photos):
    cfg = SyntheticConfig(size=64, desensitise=0.5, seed=7)
    splits = {"train": 24, "test": 8}
    generate(tmp_path / "a", photos, splits, cfg, sheet_count=8)
    generate(tmp_path / "b", photos, splits, cfg, sheet_count=8)
    for rel in ("train.txt", "test3.txt", "images/train_00005.jpg"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    records, problems = read_list_file(tmp_path / "a" / "train.txt")
    assert not problems and len(records) == 24
    assert {0, 1, 2, 3} <= {r.label for r in records}
    classes = set()
    for r in read_list_file(tmp_path / "a" / "train3.txt")[0]:
        if r.mask:
            classes |= set(np.unique(cv2.imread(r.mask, cv2.IMREAD_UNCHANGED)).tolist())
    assert classes == {0, 1, 2}
    sheet = cv2.imread(str(tmp_path / "a" / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] >= 128
    other = generate(tmp_path / "c", photos, {"train": 30, "test": 8}, cfg)
    assert other["test"].read_bytes() == (tmp_path / "a" / "test.txt").read_bytes()


def test_cli(tmp_path):
    code = make_synthetic_data.main(
        ["--out", str(tmp_path / "d"), "--train", "4", "--val", "2", "--test", "2", "--size", "64"]
    )
    assert code == 0 and (tmp_path / "d" / "val.txt").is_file()
