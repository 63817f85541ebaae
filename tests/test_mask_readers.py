"""Every mask encoding × binary and three-class tasks × every reader gives the classes
the file means (the seed's colour masks were once read inverted in binary tasks)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

from common.data.datasets import ForgeryDataset
from common.data.masks import MaskOptions
from common.data.sources import read_list_file
from common.evaluation.baselines import all_ones_pixel_f1
from common.evaluation.batch_run import EvalSettings
from common.evaluation.localization import run_pred_dir_evaluation
from common.inference.batched import _InferenceItems

H, W = 32, 40
# BGR colours of the seed's palette
WHITE, RED, BLUE = (255, 255, 255), (0, 0, 255), (255, 0, 0)


def _truth(three_class: bool) -> np.ndarray:
    """Classes the test masks encode: a tampered block, and a desensitised one."""
    classes = np.zeros((H, W), np.uint8)
    classes[4:14, 6:20] = 1
    if three_class:
        classes[20:30, 24:38] = 2
    return classes


def _encode(name: str, classes: np.ndarray) -> tuple[np.ndarray, str]:
    """The class mask in encoding ``name``; returns (array, file extension)."""
    if name == "index":
        return classes, ".png"
    if name == "index16":
        return classes.astype(np.uint16), ".png"
    if name == "grey":
        return np.array([0, 255, 128], np.uint8)[classes], ".png"
    if name == "seed_luma":
        return np.array([255, 76, 29], np.uint8)[classes], ".png"
    if name in ("colour", "colour_jpeg"):
        palette = np.array([WHITE, RED, BLUE], np.uint8)
        return palette[classes], ".jpg" if name == "colour_jpeg" else ".png"
    if name in ("rgb_binary", "rgb_binary_jpeg"):
        grey = np.where(classes > 0, 255, 0).astype(np.uint8)
        return np.dstack([grey] * 3), ".jpg" if name == "rgb_binary_jpeg" else ".png"
    raise AssertionError(name)


# encoding → does it carry the desensitised class?
ENCODINGS = {
    "index": True,
    "index16": True,
    "grey": True,
    "seed_luma": True,
    "colour": True,
    "colour_jpeg": True,
    "rgb_binary": False,
    "rgb_binary_jpeg": False,
}


@pytest.fixture(params=list(ENCODINGS))
def encoded(request, tmp_path):
    """(list file, expected classes, whether the file is lossy) for one encoding."""
    name = request.param
    truth = _truth(ENCODINGS[name])
    array, ext = _encode(name, truth)
    mask_path = tmp_path / f"gt3_sample{ext}"
    ok = cv2.imwrite(str(mask_path), array, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    image = np.full((H, W, 3), 90, np.uint8)
    cv2.imwrite(str(tmp_path / "sample.png"), image)
    (tmp_path / "list.txt").write_text(f"sample.png {mask_path.name} 1\n")
    return tmp_path / "list.txt", truth, ext == ".jpg"


def _agree(got: np.ndarray, want: np.ndarray, lossy: bool) -> None:
    """Exact for lossless files; JPEG may move a few pixels at the region borders."""
    agreement = float((got == want).mean())
    assert agreement >= (0.97 if lossy else 1.0), agreement


@pytest.mark.parametrize("nclass", [1, 3])
def test_training_dataset_reads_every_encoding(encoded, nclass):
    list_file, truth, lossy = encoded
    records, problems = read_list_file(list_file)
    assert not problems
    item = ForgeryDataset(records, masks=MaskOptions(nclass=nclass))[0]
    mask = item["mask"].numpy()
    want = truth if nclass == 3 else (truth > 0)
    _agree(mask[0] if nclass == 1 else mask, want.astype(mask.dtype), lossy)
    assert item["label"].item() == 1


@pytest.mark.parametrize("nclass", [1, 3])
def test_inference_reader_reads_every_encoding(encoded, nclass):
    list_file, truth, lossy = encoded
    records, _ = read_list_file(list_file)
    items = _InferenceItems(records, 64, MaskOptions(nclass=nclass), False, lambda _: False)
    want = truth if nclass == 3 else (truth > 0).astype(np.uint8)
    _agree(items[0]["mask"], want, lossy)


def test_pred_dir_scores_a_perfect_map_as_perfect(encoded, tmp_path):
    """The binary evaluation of a map equal to the truth gives pixel-F1 = 1 (a colour
    mask read on luma once gave ≈ 0)."""
    list_file, truth, lossy = encoded
    records, problems = read_list_file(list_file)
    pred_dir = tmp_path / "maps"
    pred_dir.mkdir()
    cv2.imwrite(str(pred_dir / "sample.png"), np.where(truth > 0, 255, 0).astype(np.uint8))
    out = tmp_path / "eval"
    code = run_pred_dir_evaluation(records, problems, pred_dir, out, EvalSettings())
    summary = json.loads((out / "summary.json").read_text())
    assert code == 0
    assert summary["pixel_f1"] >= (0.97 if lossy else 1.0)


def test_all_ones_baseline_counts_the_manipulated_area(encoded):
    list_file, truth, lossy = encoded
    positives = float((truth > 0).sum())
    expected = 2 * positives / (positives + truth.size)
    assert all_ones_pixel_f1(list_file) == pytest.approx(expected, rel=0.03 if lossy else 1e-9)


def _faint_list(tmp_path, mask: np.ndarray, ext: str = ".png") -> tuple:
    cv2.imwrite(str(tmp_path / "sample.png"), np.full((H, W, 3), 90, np.uint8))
    cv2.imwrite(str(tmp_path / f"faint{ext}"), mask, [cv2.IMWRITE_JPEG_QUALITY, 90])
    (tmp_path / "list.txt").write_text(f"sample.png faint{ext} 1\n")
    records, problems = read_list_file(tmp_path / "list.txt")
    assert not problems
    return records


def test_a_dim_grey_mask_read_as_empty_is_said(tmp_path):
    """A mask drawn at grey 100 on black is empty under training's threshold of 127: the
    dataset says so, naming the file, and a threshold of 0 reads the region."""
    from common.data.masks import read_classes

    mask = np.zeros((H, W), np.uint8)
    mask[4:14, 6:20] = 100
    records = _faint_list(tmp_path, mask)
    with pytest.warns(UserWarning, match=r"faint\.png: its grey marks \(140 pixels, up to 100\)"):
        item = ForgeryDataset(records, masks=MaskOptions(threshold=127))[0]
    assert not item["mask"].any()
    classes, note = read_classes(tmp_path / "faint.png", (H, W), threshold=0)
    assert note is None and (classes > 0).sum() == 140


def test_noise_or_a_speck_on_a_black_mask_is_not_said(tmp_path):
    """JPEG noise on black, and a speck under a 3×3 patch, stay quiet."""
    from common.data.masks import read_classes

    rng = np.random.default_rng(0)
    noisy = rng.integers(0, 9, (H, W), dtype=np.uint8)
    noisy[0, 0] = 30
    _faint_list(tmp_path, noisy, ".jpg")
    assert read_classes(tmp_path / "faint.jpg", (H, W), threshold=127)[1] is None
    speck = np.zeros((H, W), np.uint8)
    speck[10:12, 10:12] = 100
    _faint_list(tmp_path, speck)
    assert read_classes(tmp_path / "faint.png", (H, W), threshold=127)[1] is None


def test_evaluation_notes_a_dim_grey_mask_under_a_threshold(tmp_path):
    from common.data.masks import read_ground_truth

    mask = np.zeros((H, W), np.uint8)
    mask[4:14, 6:20] = 100
    _faint_list(tmp_path, mask)
    notes: list[str] = []
    got, label = read_ground_truth(
        1, tmp_path / "faint.png", (H, W), MaskOptions(threshold=127), notes
    )
    assert label == 1 and not got.any()
    assert len(notes) == 1 and "at or below the mask threshold 127" in notes[0]
