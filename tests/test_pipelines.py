"""The README's pipelines on generated data, end to end: generate → train → infer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

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
            "4",
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


def test_three_class_pipeline(synthetic, tmp_path):
    run = tmp_path / "run3"
    _train(train_demo_nclass3.main, synthetic / "train3.txt", synthetic / "val3.txt", run)
    code = run_three_class_inference(
        run / "checkpoints" / "last.pt", synthetic / "test3.txt", tmp_path / "o"
    )
    assert code == 0
    summary = json.loads((tmp_path / "o" / "test3" / "last" / "summary.json").read_text())
    assert "f1_desensitised" in summary and summary["num_images"] == 6


def test_classification_pipeline(synthetic, tmp_path):
    run = tmp_path / "runc"
    _train(train_demo_cls.main, synthetic / "train.txt", synthetic / "val.txt", run)
    code = infer_mvss_cls.main(
        [
            "--model_path",
            str(run / "checkpoints" / "last.pt"),
            "--test_file",
            str(synthetic / "test.txt"),
            "--save_dir",
            str(tmp_path / "o"),
            "--crop",
            "64",
            "--crop-stride",
            "64",
        ]
    )
    assert code == 0
    summary = json.loads((tmp_path / "o" / "test" / "last" / "summary.json").read_text())
    assert summary["num_images"] == 6 and sum(map(sum, summary["confusion_matrix"])) == 6
