"""Sources (list, folder pair, JSON, images) and the dataset's samples."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from common.data.datasets import ForgeryDataset, collate_samples
from common.data.masks import MaskOptions
from common.data.sources import load_source, read_list_file, scan_folder_pair
from common.data.transforms import AugmentConfig, build_eval_transform, build_train_transform


def _img(path, h=40, w=48, value=None):
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    img = (
        rng.integers(0, 255, (h, w, 3), dtype=np.uint8)
        if value is None
        else np.full((h, w, 3), value, np.uint8)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), img)
    return path


def _mask(path, h=40, w=48):
    m = np.zeros((h, w), np.uint8)
    m[10:30, 12:36] = 255
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), m)
    return path


def test_list_file_rows_and_problems(tmp_path):
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    _mask(tmp_path / "a_gt.png")
    lst = tmp_path / "list.txt"
    lst.write_text(
        "# comment\n"
        "a.png a_gt.png 2\n"
        "b.png None 0\n"
        "c.png\n"
        "a.png a_gt.png\n"
        "a.png a_gt.png x\n"
        "b.png None 1\n"
    )
    records, problems = read_list_file(lst)
    assert [r.label for r in records] == [2, 0, -1]
    assert records[0].image == str(tmp_path / "a.png")
    assert records[1].mask is None
    assert [p.where for p in problems] == [f"{lst}:5", f"{lst}:6", f"{lst}:7"]


@pytest.mark.parametrize(
    "encoding", ["utf-8", "utf-8-sig", "utf-16", "utf-16-le-bom"], ids=lambda e: e
)
def test_list_files_as_windows_editors_save_them(tmp_path, encoding):
    """Notepad and Excel save UTF-8 with a byte-order mark, PowerShell 5's ``>`` UTF-16;
    CRLF endings and a comment after the columns are common too. Every row is read:
    the mark must not stick to the first (absolute) path or turn a comment into a row."""
    _img(tmp_path / "a.png")
    _img(tmp_path / "b.png")
    _mask(tmp_path / "a_gt.png")
    text = f"# made in Excel\r\n{tmp_path / 'a.png'} a_gt.png 2  # splice\r\nb.png None 0\r\n"
    lst = tmp_path / "list.txt"
    if encoding == "utf-16-le-bom":
        lst.write_bytes(b"\xff\xfe" + text.encode("utf-16-le"))
    else:
        lst.write_bytes(text.encode(encoding))
    records, problems = read_list_file(lst)
    assert problems == []
    assert [(r.image, r.mask, r.label) for r in records] == [
        (str(tmp_path / "a.png"), str(tmp_path / "a_gt.png"), 2),
        (str(tmp_path / "b.png"), None, 0),
    ]


def test_json_list_with_a_byte_order_mark(tmp_path):
    _img(tmp_path / "a.png")
    lst = tmp_path / "list.json"
    lst.write_bytes(json.dumps([["a.png", "Negative"]]).encode("utf-8-sig"))
    records, problems = load_source(lst)
    assert problems == [] and [(r.image, r.label) for r in records] == [
        (str(tmp_path / "a.png"), 0)
    ]


def test_folder_pair_by_stem_not_order(tmp_path):
    for name in ("zeta", "alpha", "mid"):
        _img(tmp_path / "images" / f"{name}.jpg")
    _mask(tmp_path / "masks" / "zeta_gt.png")
    _mask(tmp_path / "masks" / "alpha.png")
    _mask(tmp_path / "masks" / "orphan_mask.png")
    records, problems = scan_folder_pair(tmp_path)
    by_image = {r.image.split("/")[-1]: r for r in records}
    assert by_image["zeta.jpg"].mask.endswith("zeta_gt.png")
    assert by_image["alpha.jpg"].mask.endswith("alpha.png")
    assert by_image["mid.jpg"].mask is None and by_image["mid.jpg"].label == 0
    assert any("orphan_mask.png" in p.where and "no matching image" in p.reason for p in problems)


def test_folder_pair_ambiguous_masks(tmp_path):
    _img(tmp_path / "images" / "x.png")
    _mask(tmp_path / "masks" / "x_gt.png")
    _mask(tmp_path / "masks" / "x_mask.png")
    records, problems = scan_folder_pair(tmp_path)
    assert records == []
    assert "ambiguous" in problems[0].reason


def test_json_list(tmp_path):
    _img(tmp_path / "a.png")
    _mask(tmp_path / "m.png")
    path = tmp_path / "l.json"
    path.write_text(json.dumps([["a.png", "m.png"], ["a.png", "Negative"], ["bad"]]))
    records, problems = load_source(path)
    assert [r.label for r in records] == [1, 0] and len(problems) == 1


def test_glob_and_folder_of_images(tmp_path):
    _img(tmp_path / "imgs" / "1.png")
    _img(tmp_path / "imgs" / "2.jpg")
    assert len(load_source(str(tmp_path / "imgs"))[0]) == 2
    assert len(load_source(str(tmp_path / "imgs" / "*.png"))[0]) == 1


def test_dataset_sample_and_bad_file_skipped(tmp_path):
    _img(tmp_path / "a.png")
    _mask(tmp_path / "a_gt.png")
    _img(tmp_path / "b.png", value=128)
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8\xff garbage")
    lst = tmp_path / "list.txt"
    lst.write_text("a.png a_gt.png 1\nbroken.jpg a_gt.png 1\nb.png None 0\n")
    records, _ = read_list_file(lst)
    ds = ForgeryDataset(records, build_eval_transform(64))
    item = ds[0]
    assert item["image"].shape == (3, 64, 64) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 64, 64) and set(item["mask"].unique().tolist()) == {0.0, 1.0}
    assert item["edge"].shape == (1, 16, 16) and item["edge"].sum() > 0
    assert item["label"].item() == 1 and item["size"].tolist() == [40, 48]
    assert "error" in ds[1] and ds[1]["path"].endswith("broken.jpg")
    batch = next(iter(DataLoader(ds, batch_size=3, collate_fn=collate_samples)))
    assert batch["count"] == 2 and batch["image"].shape == (2, 3, 64, 64)
    assert len(batch["skipped"]) == 1 and "broken.jpg" in batch["skipped"][0][0]
    assert batch["mask"][1].sum() == 0  # authentic


def test_normalisation_bgr_constants(tmp_path):
    _img(tmp_path / "w.png", value=255)
    records, _ = load_source(str(tmp_path / "w.png"))
    x = ForgeryDataset(records)[0]["image"]
    expected = [(1 - 0.485) / 0.229, (1 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    assert x[:, 0, 0].tolist() == pytest.approx(expected, rel=1e-5)


def test_three_class_dataset_and_augmentations(tmp_path):
    _img(tmp_path / "a.png", 64, 64)
    m = np.zeros((64, 64), np.uint8)
    m[:20, :20] = 1
    m[40:, 40:] = 2
    cv2.imwrite(str(tmp_path / "m.png"), m)
    (tmp_path / "l.txt").write_text("a.png m.png 1\n")
    records, _ = read_list_file(tmp_path / "l.txt")
    cfg = AugmentConfig(size=32, hflip=1.0, jpeg_p=1.0, blur_p=1.0, noise_p=1.0)
    ds = ForgeryDataset(records, build_train_transform(cfg), MaskOptions(nclass=3))
    item = ds[0]
    assert item["mask"].dtype == torch.long and set(item["mask"].unique().tolist()) == {0, 1, 2}
    assert item["mask"][0, -1] == 1  # flipped horizontally: class 1 now top right
    assert item["edge"].shape == (1, 8, 8)


def _one_sample(tmp_path, mask, name="s"):
    _img(tmp_path / f"{name}.png", *mask.shape)
    cv2.imwrite(str(tmp_path / f"{name}_m.png"), mask)
    (tmp_path / f"{name}.txt").write_text(f"{name}.png {name}_m.png 2\n")
    return read_list_file(tmp_path / f"{name}.txt")[0]


def test_crop_labels_follow_the_crop_content(tmp_path):
    """A crop that misses the manipulated region trains as authentic; one that keeps any
    of it as manipulated (the list said manipulated for the whole image)."""
    mask = np.zeros((96, 96), np.uint8)
    mask[:20, :20] = 255
    records = _one_sample(tmp_path, mask)
    transform = build_train_transform(AugmentConfig(size=48, crop=True, hflip=0.5))
    ds = ForgeryDataset(records, transform, MaskOptions(nclass=1), labels_from_content=True)
    seen = set()
    for seed in range(40):
        transform.set_random_seed(seed)
        item = ds[0]
        has_region = bool(item["mask"].sum() > 0)
        assert item["label"].item() == int(has_region)
        assert item["type"].item() == (2 if has_region else 0)
        assert bool(item["edge"].sum() > 0) == has_region
        seen.add(has_region)
    assert seen == {True, False}  # both kinds of crop happened
    # evaluation keeps the image's own label
    assert ForgeryDataset(records, build_eval_transform(48))[0]["label"].item() == 1


def test_resize_that_loses_a_tiny_region_gives_authentic(tmp_path):
    mask = np.zeros((200, 200), np.uint8)
    mask[1, 1] = 255  # nearest-neighbour 200 → 64 samples rows/cols 0, 3, 6, …: lost
    records = _one_sample(tmp_path, mask)
    train = ForgeryDataset(records, build_eval_transform(64), labels_from_content=True)
    item = train[0]
    assert item["mask"].sum() == 0 and item["label"].item() == 0
    assert ForgeryDataset(records, build_eval_transform(64))[0]["label"].item() == 1


def test_min_region_pixels_drops_slivers(tmp_path):
    mask = np.zeros((64, 64), np.uint8)
    mask[10:13, 10:13] = 255  # 9 pixels
    records = _one_sample(tmp_path, mask)
    keep = ForgeryDataset(records, labels_from_content=True, min_region_pixels=9)[0]
    assert keep["label"].item() == 1 and keep["mask"].sum() == 9
    drop = ForgeryDataset(records, labels_from_content=True, min_region_pixels=10)[0]
    assert drop["label"].item() == 0 and drop["mask"].sum() == 0 and drop["edge"].sum() == 0
    with pytest.raises(ValueError, match="min_region_pixels"):
        ForgeryDataset(records, min_region_pixels=0)


def test_image_class_from_crop_content(tmp_path):
    """0 authentic, 1 tampered present, 2 desensitised only: what the 3-class image head
    learns (not the list's manipulation type)."""
    colour = np.full((64, 64, 3), 255, np.uint8)
    colour[:8, :8] = (0, 0, 255)  # red: tampered
    colour[40:, 40:] = (255, 0, 0)  # blue: desensitised
    _img(tmp_path / "c.png", 64, 64)
    cv2.imwrite(str(tmp_path / "c_m.png"), colour)
    (tmp_path / "c.txt").write_text("c.png c_m.png 3\n")
    records, _ = read_list_file(tmp_path / "c.txt")
    transform = build_train_transform(AugmentConfig(size=24, crop=True, hflip=0.0))
    ds = ForgeryDataset(records, transform, MaskOptions(nclass=3), labels_from_content=True)
    seen = set()
    for seed in range(60):
        transform.set_random_seed(seed)
        item = ds[0]
        present = set(item["mask"].unique().tolist())
        want = 1 if 1 in present else 2 if 2 in present else 0
        assert item["image_class"].item() == want
        seen.add(want)
    assert seen == {0, 1, 2}


def test_three_class_config_defaults_to_the_seeds_augmentation_recipe():
    import albumentations as A
    import yaml

    from common.data.transforms import VarianceGaussNoise

    config = Path(__file__).resolve().parents[1] / "configs" / "train_demo_nclass3.yaml"
    cfg = yaml.safe_load(config.read_text())
    aug = AugmentConfig.from_config({**cfg, "size": 64})
    ops = build_train_transform(aug).transforms
    # Resize → OneOf(flips, rot90, brightness/contrast, HSV; p 0.5) → median blur p 0.3 →
    # noise with variance 25–900 p 0.3 → JPEG 60–100 p 0.5
    assert [type(op).__name__ for op in ops] == [
        "Resize",
        "OneOf",
        "MedianBlur",
        "VarianceGaussNoise",
        "ImageCompression",
    ]
    one_of = ops[1]
    assert one_of.p == 0.5 and [type(t).__name__ for t in one_of.transforms] == [
        "HorizontalFlip",
        "VerticalFlip",
        "RandomRotate90",
        "RandomBrightnessContrast",
        "HueSaturationValue",
    ]
    assert ops[2].p == 0.3 and tuple(ops[2].blur_limit) == (3, 7)
    assert isinstance(ops[3], VarianceGaussNoise) and ops[3].var_limit == (25.0, 900.0)
    assert ops[3].p == 0.3 and ops[4].p == 0.5 and tuple(ops[4].quality_range) == (60, 100)
    assert isinstance(ops[0], A.Resize)


def test_noise_variance_is_drawn_uniformly():
    """Mean noise variance over many draws from 25–900 is 462.5 when the variance is
    uniform (the seed's albumentations); a uniform standard deviation would give 358."""
    from common.data.transforms import VarianceGaussNoise

    noise = VarianceGaussNoise(var_limit=(25.0, 900.0), p=1.0)
    noise.set_random_seed(0)
    grey = np.full((48, 48, 3), 128, np.uint8)
    variances = [
        float(np.var(noise(image=grey)["image"].astype(np.float64) - 128)) for _ in range(400)
    ]
    assert 425 < np.mean(variances) < 500
    assert min(variances) > 20 and max(variances) < 950
    with pytest.raises(ValueError, match="one_of: unknown"):
        AugmentConfig(one_of=("mixup",))
