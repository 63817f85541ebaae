"""The desensitised policy (positive | negative | ignore) through labels, losses, metrics
and the binary and classifier scripts; per-image pixel FPR on authentic images."""

from __future__ import annotations

import csv
import json
import shutil

import cv2
import numpy as np
import pytest
import torch

import infer_mvss_calmetrics
import infer_mvss_cls
from common.data.datasets import ForgeryDataset
from common.data.masks import (
    IGNORE,
    MaskOptions,
    binary_from_classes,
    image_label,
    sample_labels,
)
from common.data.sources import read_list_file
from common.evaluation.metrics import LocalizationEvaluator
from common.training.losses import MVSSLoss
from tests.helpers import make_tiny_checkpoint

CLASSES = np.array([[0, 1, 2, 2]], np.uint8)
MOSAIC_ONLY = np.array([[0, 2, 2, 0]], np.uint8)


def test_binary_mask_and_image_label_per_policy():
    assert binary_from_classes(CLASSES, "positive").tolist() == [[0, 1, 1, 1]]
    assert binary_from_classes(CLASSES, "negative").tolist() == [[0, 1, 0, 0]]
    assert binary_from_classes(CLASSES, "ignore").tolist() == [[0, 1, IGNORE, IGNORE]]
    for policy, want in (("positive", 1), ("negative", 0), ("ignore", -1)):
        assert image_label(1, MOSAIC_ONLY, policy) == want
        assert image_label(1, CLASSES, policy) == 1  # tampered pixels present
        assert image_label(0, MOSAIC_ONLY, policy) == 0  # the list says authentic
    # a manipulated row whose mask is empty keeps its label (the release's rule)
    assert image_label(1, np.zeros((2, 2), np.uint8), "negative") == 1
    with pytest.raises(ValueError, match="positive, negative, ignore"):
        MaskOptions(desensitised="maybe")


def test_training_labels_per_policy():
    for policy, want in (("positive", 1), ("negative", 0), ("ignore", -1)):
        labels = sample_labels(MOSAIC_ONLY, 1, policy, from_content=True)
        assert labels.label == want and labels.image_class == 2
    sliver = np.zeros((4, 4), np.uint8)
    sliver[0, 0] = 1
    sliver[2:, 2:] = 2
    labels = sample_labels(sliver, 1, "ignore", from_content=True, min_region_pixels=2)
    assert labels.label == -1  # the tampered sliver dropped, desensitised remains
    assert labels.classes[0, 0] == 0 and (labels.classes[2:, 2:] == 2).all()


def _colour_sample(tmp_path, tampered: bool) -> list:
    colour = np.full((32, 32, 3), 255, np.uint8)
    colour[16:, 16:] = (255, 0, 0)  # blue: desensitised
    if tampered:
        colour[:8, :8] = (0, 0, 255)  # red: tampered
    cv2.imwrite(str(tmp_path / "img.png"), np.full((32, 32, 3), 70, np.uint8))
    cv2.imwrite(str(tmp_path / "gt3_img.png"), colour)
    (tmp_path / "l.txt").write_text("img.png gt3_img.png 1\n")
    return read_list_file(tmp_path / "l.txt")[0]


@pytest.mark.parametrize("policy", ["positive", "negative", "ignore"])
def test_dataset_masks_per_policy(tmp_path, policy):
    records = _colour_sample(tmp_path, tampered=True)
    item = ForgeryDataset(records, masks=MaskOptions(desensitised=policy))[0]
    mask = item["mask"][0]
    assert mask[0, 0] == 1 and mask[0, 31] == 0
    want = {"positive": 1, "negative": 0, "ignore": IGNORE}[policy]
    assert mask[31, 31] == want
    assert item["label"].item() == 1
    # the edge target follows the positive pixels only; under ignore the desensitised
    # region's boundary is neither edge nor background
    edge = item["edge"][0]
    edge_rows = (edge == 1).nonzero()[:, 0]
    assert (edge_rows.max() >= 4) == (policy == "positive")
    assert bool((edge == IGNORE).any()) == (policy == "ignore")
    if policy == "ignore":
        assert (edge[4:, 4:] == IGNORE).all() and (edge[:2, :2] == 1).any()


def test_ignored_pixels_do_not_move_the_loss():
    torch.manual_seed(0)
    seg = torch.randn(2, 1, 8, 8)
    edge = torch.randn(2, 1, 2, 2)
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, :4, :4] = 1
    mask[:, :, 4:, 4:] = IGNORE
    label = torch.tensor([1, -1])  # the second sample is left out of the image term
    loss = MVSSLoss(pixel_bce=1.0)
    base = loss(edge, seg, mask, torch.zeros(2, 1, 2, 2), label)
    moved = seg.clone()
    moved[:, :, 4:, 4:] += 5.0  # only ignored pixels change
    moved[1, :, :, :] -= 3.0  # and the left-out sample's image score (its max)
    moved[1, :, 4:, 4:] += 10.0
    again = loss(edge, moved, mask, torch.zeros(2, 1, 2, 2), label)
    for key in ("seg", "pixel_bce"):
        assert again[key].item() != pytest.approx(0.0)
    assert again["seg"].item() == pytest.approx(base["seg"].item(), rel=1e-6)
    # the image term only sees sample 0, whose max lies in the ignored block either way
    only_first = loss(edge[:1], seg[:1], mask[:1], torch.zeros(1, 1, 2, 2), label[:1])
    assert base["clf"].item() == pytest.approx(only_first["clf"].item(), rel=1e-6)


def test_ignored_edge_pixels_do_not_move_the_edge_loss():
    torch.manual_seed(1)
    seg = torch.randn(1, 1, 8, 8)
    edge_logits = torch.randn(1, 1, 4, 4)
    edge = torch.zeros(1, 1, 4, 4)
    edge[:, :, 0, :2] = 1
    edge[:, :, 2:, 2:] = IGNORE
    loss = MVSSLoss()
    mask = torch.zeros(1, 1, 8, 8)
    mask[:, :, :2, :4] = 1
    base = loss(edge_logits, seg, mask, edge, torch.tensor([1]))["edge"]
    moved = edge_logits.clone()
    moved[:, :, 2:, 2:] += 7.0
    assert loss(moved, seg, mask, edge, torch.tensor([1]))["edge"].item() == pytest.approx(
        base.item(), rel=1e-6
    )
    moved[:, :, 1, 0] += 7.0  # a pixel that counts
    assert loss(moved, seg, mask, edge, torch.tensor([1]))["edge"].item() != pytest.approx(
        base.item(), rel=1e-3
    )


def test_evaluator_skips_ignored_pixels_and_reports_authentic_fpr():
    probs = np.zeros((3, 4, 4), np.float32)
    masks = np.zeros((3, 4, 4), np.uint8)
    masks[0, :2] = 1
    masks[0, 2:] = IGNORE
    probs[0, :2] = 0.9
    probs[0, 2:] = 0.9  # predicted manipulated where ignored: no false positives
    probs[1, 0, :2] = 0.8  # authentic: 2 of 16 pixels above 0.5
    ev = LocalizationEvaluator()
    rows = ev.update(probs, masks, [1, 0, 0])
    assert rows[0]["pixel_f1"] == 1.0 and rows[0]["pixel_fpr"] is None  # no negatives left
    assert rows[1]["pixel_fpr"] == pytest.approx(2 / 16) and rows[2]["pixel_fpr"] == 0.0
    result = ev.compute()
    assert result["pixel_f1"] == 1.0
    assert result["pixel_fpr_authentic"] == pytest.approx(1 / 16)
    assert result["num_authentic_scored"] == 2


@pytest.fixture(scope="module")
def mosaic_data(tmp_path_factory):
    """One tampered image, one image with only a desensitised region, one authentic."""
    root = tmp_path_factory.mktemp("mosaic")
    rng = np.random.default_rng(0)
    rows = []
    for name, region in (("tamper", (0, 0, 255)), ("mosaic", (255, 0, 0)), ("orig", None)):
        cv2.imwrite(str(root / f"{name}.png"), rng.integers(0, 255, (64, 64, 3), np.uint8))
        if region is None:
            rows.append(f"{name}.png None 0")
            continue
        colour = np.full((64, 64, 3), 255, np.uint8)
        colour[10:40, 10:40] = region
        cv2.imwrite(str(root / f"gt3_{name}.png"), colour)
        rows.append(f"{name}.png gt3_{name}.png 1")
    (root / "list.txt").write_text("\n".join(rows) + "\n")
    return root


def _labels(csv_path):
    with open(csv_path) as fh:
        return {r["path"].split("/")[-1]: r["label"] for r in csv.DictReader(fh)}


@pytest.mark.parametrize(
    ("policy", "mosaic_label"), [(None, "0"), ("positive", "1"), ("ignore", "-1")]
)
def test_classifier_script_labels_follow_the_policy(mosaic_data, tmp_path, policy, mosaic_label):
    ckpt = make_tiny_checkpoint(tmp_path / "cls.pt", cls_head="max")
    argv = [
        "--model_path",
        str(ckpt),
        "--test_file",
        str(mosaic_data / "list.txt"),
        "--save_dir",
        str(tmp_path / "o"),
        "--crop",
        "64",
        "--crop-stride",
        "64",
        "--workers",
        "0",
    ]
    if policy:
        argv += ["--desensitised", policy]
    assert infer_mvss_cls.main(argv) == 0
    labels = _labels(tmp_path / "o" / "list" / "cls" / "per_image.csv")
    # default (None) is the seed's classifier rule: mosaic-only images are authentic
    assert labels == {"tamper.png": "1", "mosaic.png": mosaic_label, "orig.png": "0"}


@pytest.mark.parametrize(
    ("policy", "mosaic_label"), [(None, "1"), ("negative", "0"), ("ignore", "-1")]
)
def test_binary_script_labels_follow_the_policy(mosaic_data, tmp_path, policy, mosaic_label):
    ckpt = make_tiny_checkpoint(tmp_path / "loc.pt")
    argv = [
        "--model_path",
        str(ckpt),
        "--test_file",
        str(mosaic_data / "list.txt"),
        "--save_dir",
        str(tmp_path / "o"),
        "--resize",
        "64",
        "--workers",
        "0",
    ]
    if policy:
        argv += ["--desensitised", policy]
    assert infer_mvss_calmetrics.main(argv) == 0
    out = tmp_path / "o" / "list" / "loc"
    assert _labels(out / "per_image.csv") == {
        "tamper.png": "1",
        "mosaic.png": mosaic_label,
        "orig.png": "0",
    }
    summary = json.loads((out / "summary.json").read_text())
    n_authentic = 2 if mosaic_label == "0" else 1
    assert summary["num_authentic_scored"] == n_authentic
    assert summary["pixel_fpr_authentic"] is not None
    assert summary["num_tampered_scored"] == (2 if mosaic_label == "1" else 1)


def test_classifier_label_from_name_is_the_seeds_rule(mosaic_data, tmp_path):
    ckpt = make_tiny_checkpoint(tmp_path / "cls.pt", cls_head="max")
    # the rule reads the whole path as given, so the folder must not say orig/mosaic
    images = tmp_path / "set"
    images.mkdir()
    for name in ("tamper.png", "mosaic.png", "orig.png", "gt3_tamper.png"):
        shutil.copy(mosaic_data / name, images / name)
    pattern = str(images / "*.png")  # images only (no list): the names decide
    argv = ["--model_path", str(ckpt), "--test_file", pattern, "--save_dir", str(tmp_path)]
    argv += ["--crop", "64", "--crop-stride", "64", "--workers", "0", "--label-from-name"]
    assert infer_mvss_cls.main(argv) == 0
    labels = _labels(tmp_path / "inputs" / "cls" / "per_image.csv")
    assert labels["tamper.png"] == "1" and labels["mosaic.png"] == "0"
    assert labels["orig.png"] == "0" and labels["gt3_tamper.png"] == "1"


@pytest.mark.parametrize(
    ("policy", "positives", "total"),
    [("positive", 320, 1024), ("negative", 64, 1024), ("ignore", 64, 768)],
)
def test_all_ones_baseline_follows_the_policy(tmp_path, policy, positives, total):
    from common.evaluation.baselines import all_ones_pixel_f1

    _colour_sample(tmp_path, tampered=True)
    got = all_ones_pixel_f1(tmp_path / "l.txt", desensitised=policy)
    assert got == pytest.approx(2 * positives / (positives + total))


def test_desensitised_slivers_below_the_minimum_are_dropped_under_every_policy():
    classes = np.zeros((8, 8), np.uint8)
    classes[0, 0] = 2  # one desensitised pixel left by a crop
    for policy in ("positive", "negative", "ignore"):
        labels = sample_labels(classes, 1, policy, from_content=True, min_region_pixels=4)
        assert labels.label == 0 and labels.image_class == 0 and not labels.classes.any()


def test_classifier_label_from_name_reads_below_the_lists_folder(mosaic_data, tmp_path):
    """The seed read its list entries as written: a data set kept under a folder whose
    name says 'orig' made every image authentic once the toolkit put that folder in front."""
    ckpt = make_tiny_checkpoint(tmp_path / "cls.pt", cls_head="max")
    images = tmp_path / "originals_2024"
    images.mkdir()
    for name in ("tamper.png", "mosaic.png", "orig.png"):
        shutil.copy(mosaic_data / name, images / name)
    (images / "list.txt").write_text("tamper.png None 0\nmosaic.png None 0\norig.png None 0\n")
    for source in (images / "list.txt", images):  # a list, and the folder itself
        out = tmp_path / f"out_{source.name}"
        argv = ["--model_path", str(ckpt), "--test_file", str(source), "--save_dir", str(out)]
        argv += ["--crop", "64", "--crop-stride", "64", "--workers", "0", "--label-from-name"]
        assert infer_mvss_cls.main(argv) == 0
        (csv_path,) = out.rglob("per_image.csv")
        labels = _labels(csv_path)
        assert labels == {"tamper.png": "1", "mosaic.png": "0", "orig.png": "0"}, source
