"""The README's pipelines on generated data, end to end: generate → train → infer."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

import infer_mvss_calmetrics
import infer_mvss_cls
import make_synthetic_data
import train_demo
import train_demo_cls
import train_demo_nclass3
from tests.helpers import run_three_class_inference

TINY = [
    "--backbone",
    "resnet18",
    "--size",
    "64",
    "--batch_size",
    "4",
    "--workers",
    "0",
    "--epochs",
    "1",
    "--tensorboard",
    "false",
]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines") / "data"
    make_synthetic_data.main(
        [
            "--out",
            str(root),
            "--train",
            "12",
            "--val",
            "8",  # the first 8 hold an authentic image: an image threshold is chosen
            "--test",
            "6",
            "--size",
            "96",
            "--desensitise",
            "0.5",
            "--seed",
            "1",
        ]
    )
    return root


def _train(main, train_list: Path, val_list: Path, run: Path) -> None:
    main(
        ["--train_list", str(train_list), "--val_list", str(val_list), "--out_dir", str(run), *TINY]
    )


def _assert_used_the_stored_thresholds(summary: dict, checkpoint: Path) -> None:
    """The evaluation applied the thresholds training chose on val and stored in the
    slim best.pt (not the release's 0.5)."""
    stored = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert "optimizer" not in stored, sorted(stored)
    assert "from the checkpoint's own" in summary["thresholds_source"], summary
    thresholds = stored["thresholds"]
    kinds = ("image",) if thresholds["task"] == "classification" else ("pixel", "image")
    for kind in kinds:
        assert thresholds[kind] is not None, thresholds
        assert summary[f"{kind}_threshold"] == thresholds[kind], (kind, summary)


def test_binary_pipeline(synthetic, tmp_path):
    run = tmp_path / "run"
    _train(train_demo.main, synthetic / "train.txt", synthetic / "val.txt", run)
    code = infer_mvss_calmetrics.main(
        [
            "--model_path",
            str(run / "checkpoints" / "best.pt"),
            "--test_file",
            str(synthetic / "test.txt"),
            "--save_dir",
            str(tmp_path / "o"),
            "--resize",
            "64",
            "--workers",
            "0",
            "--fast",
            "--amp",
            "bf16",
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "o" / "test" / "best" / "summary.json").read_text())
    assert summary["num_images"] == 6 and summary["num_failed"] == 0
    _assert_used_the_stored_thresholds(summary, run / "checkpoints" / "best.pt")


def test_three_class_pipeline(synthetic, tmp_path):
    run = tmp_path / "run3"
    _train(train_demo_nclass3.main, synthetic / "train3.txt", synthetic / "val3.txt", run)
    best = run / "checkpoints" / "best.pt"  # weights and thresholds, no optimiser state
    code = run_three_class_inference(best, synthetic / "test3.txt", tmp_path / "o")
    assert code == 0
    summary = json.loads((tmp_path / "o" / "test3" / "best" / "summary.json").read_text())
    assert "f1_desensitised" in summary and summary["num_images"] == 6
    _assert_used_the_stored_thresholds(summary, best)


def test_classification_pipeline(synthetic, tmp_path):
    run = tmp_path / "runc"
    # the three-class lists, as the docs run it: their masks keep desensitised regions apart
    _train(train_demo_cls.main, synthetic / "train3.txt", synthetic / "val3.txt", run)
    best = run / "checkpoints" / "best.pt"  # weights and thresholds, no optimiser state
    code = infer_mvss_cls.main(
        [
            "--model_path",
            str(best),
            "--test_file",
            str(synthetic / "test3.txt"),
            "--save_dir",
            str(tmp_path / "o"),
            "--crop",
            "64",
            "--crop-stride",
            "64",
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "o" / "test3" / "best" / "summary.json").read_text())
    assert summary["num_images"] == 6 and sum(map(sum, summary["confusion_matrix"])) == 6
    # desensitised-only images (label 2 in the list) are authentic to the classifier
    listed = [line.split() for line in (synthetic / "test3.txt").read_text().splitlines()]
    only = {str(synthetic / cols[0]) for cols in listed if cols[-1] == "2"}
    with open(tmp_path / "o" / "test3" / "best" / "per_image.csv", newline="") as fh:
        labels = {row["path"]: row["label"] for row in csv.DictReader(fh)}
    assert only and {labels[path] for path in only} == {"0"}
    assert {labels[path] for path in labels if path not in only} == {"0", "1"}
    _assert_used_the_stored_thresholds(summary, best)
