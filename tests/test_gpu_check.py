"""bench/gpu_check.py on CPU: it refuses in one line, and the parts that can run here do."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from bench import gpu_check
from tests.helpers import make_tiny_dataset

ROOT = gpu_check.ROOT


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA machine runs the check")
def test_without_cuda_it_says_so_in_one_line_and_exits_2(tmp_path):
    out = tmp_path / "report"
    proc = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "no CUDA device" in proc.stderr
    assert not out.exists()  # nothing else done


def test_its_options_are_checked():
    args = gpu_check.parse_args(["--budget-s", "60", "--parts", "parity", "tiled"])
    assert args.budget_s == 60 and args.parts == ["parity", "tiled"] and args.compile
    with pytest.raises(gpu_check.UsageError, match="at least 10"):
        gpu_check.parse_args(["--budget-s", "5"])
    with pytest.raises(gpu_check.UsageError):
        gpu_check.parse_args(["--parts", "everything"])
    with pytest.raises(gpu_check.UsageError, match="CUDA"):
        gpu_check.require_cuda("cpu")


def test_the_report_is_written_as_json_and_markdown(tmp_path):
    fake = {
        "environment": {"gpu": "Fake GPU", "torch": "2.13.0"},
        "parts": {
            "parity": {"result": {"max_rel_diff": 1.2e-6}, "seconds": 1.0},
            "inference": {
                "result": {"rows": [{"path": "fp16 autocast", "batch": 16, "images_per_s": 99.5}]},
                "seconds": 20.0,
            },
            "training": {"error": "RuntimeError: out of memory", "seconds": 3.0},
            "scripts": {"skipped": "out of time (--budget-s)"},
        },
    }
    json_path, md_path = gpu_check.write_report(tmp_path, fake)
    assert json.loads(json_path.read_text()) == fake
    md = md_path.read_text()
    assert "| fp16 autocast | 16 | 99.5 |" in md
    assert "failed: RuntimeError: out of memory" in md
    assert "skipped: out of time" in md and "max_rel_diff: 1.2e-06" in md


def test_a_failing_part_does_not_stop_the_others_and_the_budget_skips():
    calls = []

    def fine():
        calls.append("fine")
        return {"ok": 1}

    def broken():
        raise RuntimeError("no kernel image is available")

    done = gpu_check.run_parts({"a": broken, "b": fine}, deadline=float("inf"))
    assert "no kernel image" in done["a"]["error"] and done["b"]["result"] == {"ok": 1}
    skipped = gpu_check.run_parts({"c": fine}, deadline=0.0)
    assert skipped["c"]["skipped"].startswith("out of time") and calls == ["fine"]


@pytest.mark.parametrize("task", ["localization", "three_class", "classification"])
def test_a_training_step_of_each_task_runs_here_too(tmp_path, task):
    """The training part's code on CPU: every trainable parameter gets a gradient."""
    data = make_tiny_dataset(tmp_path / "d", three_class=task == "three_class", corrupt=False)
    (tmp_path / "d" / "train.txt").write_text(data.read_text())
    row = gpu_check._task_step(
        task, tmp_path / "d", 2, "bf16", torch.device("cpu"), 64, backbone="resnet18"
    )
    assert row["losses_finite"] and row["num_params_without_grad"] == 0
    assert row["images_per_s"] > 0 and row["peak_mib"] is None
    assert row["scaler_skipped_steps"] == 0 and row["loss_scale"] is None  # no scaler in bf16


def test_the_fp16_rows_count_the_steps_the_scaler_skips(tmp_path, monkeypatch):
    """The fp16 rows run with a gradient scaler and report the steps it skipped and its
    scale (here on CPU, without fp16 autocast: the scaler's bookkeeping alone)."""
    import contextlib

    import common.core.runtime

    monkeypatch.setattr(common.core.runtime, "autocast", lambda *a: contextlib.nullcontext())
    data = make_tiny_dataset(tmp_path / "d", corrupt=False)
    (tmp_path / "d" / "train.txt").write_text(data.read_text())
    row = gpu_check._task_step(
        "localization", tmp_path / "d", 2, "fp16", torch.device("cpu"), 64, "resnet18", 4
    )
    assert row["steps"] == 4 and row["losses_finite"]
    assert row["scaler_skipped_steps"] == 0 and row["loss_scale"] == 65536.0
