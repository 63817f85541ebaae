"""The synthetic forgery generator: determinism, exact masks, classes, contact sheet."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import make_synthetic_data
from common.data.sources import read_list_file
from common.synth.forgery import (
    SyntheticConfig,
    copy_move,
    desensitise,
    make_sample,
    random_crop,
    random_region,
    remove,
    splice,
)
from common.synth.generate import GenerationMismatchError, generate
from common.synth.photos import (
    BUNDLED_SPLITS,
    SEEN_TEST,
    ArrayPool,
    assign_splits,
    bundled_photos,
    scan_folder,
)


@pytest.fixture(scope="module")
def photos():
    return [cv2.resize(p, (160, 160)) for p in bundled_photos()[:4]]


def test_bundled_photos_offline_and_split_apart():
    photos = bundled_photos()
    assert len(photos) == len(BUNDLED_SPLITS) >= 20
    assert all(p.ndim == 3 and p.shape[2] == 3 and p.dtype == np.uint8 for p in photos)
    by_split = {
        s: {n for n, v in BUNDLED_SPLITS.items() if v == s} for s in ("train", "val", "test")
    }
    assert all(by_split.values()) and len(set.union(*by_split.values())) == len(BUNDLED_SPLITS)
    assert not (by_split["test"] & by_split["train"]) and not (by_split["val"] & by_split["train"])


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


def _pools(photos):
    return {"train": ArrayPool(photos[:3]), "test": ArrayPool(photos[3:])}


def _tree(root):
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.jsonl"
    }


def test_generate_deterministic_all_classes_and_sheet(tmp_path, photos):
    cfg = SyntheticConfig(size=64, desensitise=0.5, seed=7)
    counts = {"train": 24, "test": 8}
    generate(tmp_path / "a", _pools(photos), counts, cfg, sheet_count=8)
    generate(tmp_path / "b", _pools(photos), counts, cfg, sheet_count=8, workers=2)
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")  # workers change nothing
    records, problems = read_list_file(tmp_path / "a" / "train.txt")
    assert not problems and len(records) == 24
    assert {0, 1, 2, 3} <= {r.label for r in records}
    # a desensitised-only image is type 4 in the binary list, 2 in the three-class one
    three = read_list_file(tmp_path / "a" / "train3.txt")[0]
    only = {r.image for r in three if r.label == 2}
    assert only and {r.label for r in records if r.image in only} == {4}
    assert all(r.label != 4 for r in records if r.image not in only)
    classes = set()
    for r in read_list_file(tmp_path / "a" / "train3.txt")[0]:
        if r.mask:
            classes |= set(np.unique(cv2.imread(r.mask, cv2.IMREAD_UNCHANGED)).tolist())
    assert classes == {0, 1, 2}
    sheet = cv2.imread(str(tmp_path / "a" / "contact_sheet.png"))
    assert sheet is not None and sheet.shape[0] >= 128
    other = generate(tmp_path / "c", _pools(photos), {"train": 30, "test": 8}, cfg)
    assert other.lists["test"].read_bytes() == (tmp_path / "a" / "test.txt").read_bytes()
    first = (tmp_path / "a" / "train.txt").read_text().splitlines()
    assert (tmp_path / "c" / "train.txt").read_text().splitlines()[:24] == first


def test_generate_resumes_where_it_stopped(tmp_path, photos):
    cfg = SyntheticConfig(size=64, seed=3)
    full = generate(tmp_path / "full", _pools(photos), {"train": 12, "test": 4}, cfg)
    assert full.made == 16 and full.reused == 0
    part = tmp_path / "part"
    generate(part, _pools(photos), {"train": 5, "test": 2}, cfg)
    manifest = part / "manifest.jsonl"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join(lines[:-1]) + "\n" + lines[-1][:10])  # cut mid-line
    again = generate(part, _pools(photos), {"train": 12, "test": 4}, cfg)
    assert again.reused == 6 and again.made == 10
    assert _tree(part) == _tree(tmp_path / "full")
    with pytest.raises(GenerationMismatchError):
        generate(part, _pools(photos), {"train": 12}, SyntheticConfig(size=64, seed=4))


def _photo_folder(root, n=10, size=(120, 160)):
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        base = rng.integers(0, 255, (4, 4, 3)).astype(np.float32)
        img = cv2.resize(base, size[::-1], interpolation=cv2.INTER_CUBIC)
        img += rng.normal(0, 6, img.shape)
        cv2.imwrite(str(root / f"photo_{i:02d}.jpg"), np.clip(img, 0, 255).astype(np.uint8))
    (root / "broken.jpg").write_bytes(b"\xff\xd8\xff not really a jpeg")
    return root


def test_folder_photos_go_to_one_split_each(tmp_path):
    photos_dir = _photo_folder(tmp_path / "photos")
    out = tmp_path / "syn"
    args = ["--out", str(out), "--photos", str(photos_dir), "--size", "64", "--workers", "2"]
    code = make_synthetic_data.main(
        [*args, "--train", "30", "--val", "6", "--test", "8", "--test-seen", "6"]
    )
    assert code == 0
    rows = (out / "photo_splits.csv").read_text().splitlines()[1:]
    split_of: dict[str, set[str]] = {}
    for row in rows:
        name, _, split = row.split(",")
        split_of.setdefault(name, set()).add(split)
    own = {n: s - {SEEN_TEST} for n, s in split_of.items()}
    assert len(own) == 11 and all(len(s) == 1 for s in own.values())
    assert {next(iter(s)) for s in own.values()} == {"train", "val", "test"}
    train_photos = {n for n, s in own.items() if s == {"train"}}
    import json

    for line in (out / "manifest.jsonl").read_text().splitlines():
        rec = json.loads(line)
        wanted = train_photos if rec["split"] in ("train", SEEN_TEST) else None
        for used in rec["photos"]:
            if wanted is not None:
                assert used in wanted
            else:
                assert own[used] == {rec["split"]}
        assert "broken.jpg" not in rec["photos"]


def test_a_test_set_made_later_keeps_to_the_test_photos(tmp_path):
    photos_dir = _photo_folder(tmp_path / "photos")
    common = ["--photos", str(photos_dir), "--size", "64", "--workers", "0"]
    assert (
        make_synthetic_data.main(
            ["--out", str(tmp_path / "all"), *common, "--train", "4", "--val", "2", "--test", "2"]
        )
        == 0
    )
    assert (
        make_synthetic_data.main(
            ["--out", str(tmp_path / "later"), *common, "--train", "0", "--val", "0", "--test", "2"]
        )
        == 0
    )

    def split_photos(folder, split):
        rows = (folder / "photo_splits.csv").read_text().splitlines()[1:]
        return {r.split(",")[0] for r in rows if r.endswith("," + split)}

    assert split_photos(tmp_path / "later", "test") == split_photos(tmp_path / "all", "test")
    assert not split_photos(tmp_path / "later", "test") & split_photos(tmp_path / "all", "train")


def test_unreadable_photos_are_one_line(tmp_path, capsys):
    bad = tmp_path / "bad"
    bad.mkdir()
    for i in range(3):
        (bad / f"p{i}.jpg").write_bytes(b"\xff\xd8\xff broken")
    argv = ["--out", str(tmp_path / "o"), "--photos", str(bad), "--shared-photos"]
    code = make_synthetic_data.main([*argv, "--train", "2", "--val", "0", "--test", "0"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "can be read" in err[0], err
    assert not (tmp_path / "o").exists()


def test_assign_splits_is_stable_and_keeps_groups():
    from common.synth.photos import Photo

    photos = [Photo(f"p{i}", group=f"g{i // 2}") for i in range(20)]
    a = assign_splits(photos, ["train", "val", "test"], [0.8, 0.1, 0.1], seed=0)
    b = assign_splits(list(reversed(photos)), ["train", "val", "test"], [0.8, 0.1, 0.1], seed=0)
    assert {s: {p.name for p in v} for s, v in a.items()} == {
        s: {p.name for p in v} for s, v in b.items()
    }
    assert sum(len(v) for v in a.values()) == 20 and all(a.values())
    for split in a.values():
        groups = {p.group for p in split}
        assert all(
            p.group not in groups for other in a.values() if other is not split for p in other
        )
    with pytest.raises(ValueError, match="photo-disjoint"):
        assign_splits(photos[:2], ["train", "val", "test"], [1, 1, 1], seed=0)


def _coco(photos_dir, tmp_path):
    import json

    images, anns = [], []
    for i, p in enumerate(sorted(photos_dir.glob("photo_*.jpg"))):
        images.append({"id": i, "file_name": p.name, "width": 160, "height": 120})
        x, y = 20 + 5 * i, 20
        poly = [x, y, x + 60, y, x + 60, y + 50, x + 30, y + 70, x, y + 50]
        anns.append({"id": i, "image_id": i, "segmentation": [poly], "area": 3600.0, "iscrowd": 0})
        anns.append({"id": 100 + i, "image_id": i, "segmentation": {"counts": "x"}, "iscrowd": 1})
    path = tmp_path / "instances_test.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": []}))
    return path


def test_coco_outlines_make_object_shaped_regions(tmp_path):
    from common.synth.coco import attach_objects, read_objects
    from common.synth.photos import PhotoPool

    photos_dir = _photo_folder(tmp_path / "photos")
    objects = read_objects(_coco(photos_dir, tmp_path))
    assert len(objects) == 10 and all(len(v) == 1 for v in objects.values())  # crowd skipped
    photos, matched = attach_objects(scan_folder(photos_dir), objects)
    assert matched == 10
    pool = PhotoPool([p for p in photos if p.objects])
    cfg = SyntheticConfig(size=96, authentic_ratio=0.0, object_p=1.0)
    sources = {}
    for seed in range(30):
        s = make_sample(pool, cfg, np.random.default_rng(seed))
        sources.setdefault(s.kind, set()).add(s.region_source)
        if s.region_source == "object" and s.kind == "splicing":
            ys = np.nonzero(s.classes)[0]
            # the pentagon's outline: a flat top edge, a pointed bottom
            top, bottom = ys.min(), ys.max()
            assert (s.classes[top] > 0).sum() > 2 * (s.classes[bottom] > 0).sum()
    assert sources["splicing"] == {"object"}
    assert "object" in sources.get("removal", set()) | sources.get("copy_move", set())
    code = make_synthetic_data.main(
        [
            "--out", str(tmp_path / "coco_syn"), "--photos", str(photos_dir),
            "--coco-annotations", str(_coco(photos_dir, tmp_path)),
            "--train", "8", "--val", "2", "--test", "2", "--size", "64", "--workers", "0",
        ]
    )  # fmt: skip
    assert code == 0


def _blockiness_offset(image: np.ndarray) -> tuple[int, int]:
    """The 8×8 grid phase where column/row differences jump most (JPEG block edges)."""
    g = image.astype(np.float64).mean(axis=2)
    dx = np.abs(np.diff(g, axis=1)).mean(axis=0)
    dy = np.abs(np.diff(g, axis=0)).mean(axis=1)
    col = [dx[k::8].mean() for k in range(8)]
    row = [dy[k::8].mean() for k in range(8)]
    return (int(np.argmax(row)) + 1) % 8, (int(np.argmax(col)) + 1) % 8


def test_post_processing_does_what_it_says():
    from common.synth.post import PostConfig, encode_jpeg, finish, first_compression

    rng = np.random.default_rng(0)
    smooth = cv2.resize(rng.integers(0, 255, (8, 8, 3)).astype(np.uint8), (128, 128))
    smooth = np.clip(smooth + rng.normal(0, 2, smooth.shape), 0, 255).astype(np.uint8)
    assert _blockiness_offset(first_compression(smooth, 20, (0, 0))) == (0, 0)
    # the first grid starts (dy, dx) pixels before the final one
    assert _blockiness_offset(first_compression(smooth, 20, (3, 5))) == (8 - 3, 8 - 5)
    mask = np.zeros((160, 160), np.uint8)
    mask[40:80, 40:80] = 1
    big = cv2.resize(smooth, (160, 160))
    social = PostConfig(noise_p=0, social_p=1.0)
    image, m, data = finish(big, mask, 96, social, rng)
    assert image.shape == (96, 96, 3) and m.shape == (96, 96) and set(np.unique(m)) == {0, 1}
    sof = data.index(b"\xff\xc0")
    assert data[sof + 11] == 0x22  # luma sampling 2×2 against chroma 1×1: 4:2:0
    plain = PostConfig(noise_p=0, jpeg_p=0)
    assert finish(big, mask, 96, plain, rng)[2] is None  # stored losslessly
    image, _, data = finish(big, mask, 96, plain, rng, double=True)  # a double JPEG saves
    assert data is not None and data[:3] == b"\xff\xd8\xff"
    chain = PostConfig(noise_p=0, jpeg_p=0, resize_chain_p=1.0)
    assert finish(big, mask, 96, chain, rng)[0].shape == (96, 96, 3)
    assert len(encode_jpeg(smooth, 90)) > len(encode_jpeg(smooth, 30))


def test_cli(tmp_path):
    code = make_synthetic_data.main(
        ["--out", str(tmp_path / "d"), "--train", "4", "--val", "2", "--test", "2", "--size", "64"]
    )
    assert code == 0 and (tmp_path / "d" / "val.txt").is_file()
