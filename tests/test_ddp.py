"""Two-process DDP training (torchrun, gloo, CPU) through the three training scripts, on
data as users have it: batches where one rank holds only authentic images, a dataset
whose size does not split evenly, gradient accumulation, a corrupt file, and a
non-finite loss on one rank. Each run must finish, write last.pt, and leave both ranks
with identical weights and buffers (the saved ones)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils.data import DistributedSampler

from tests.ddp_worker import state_digest
from tests.helpers import make_tiny_dataset

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ("train_demo", "train_demo_nclass3", "train_demo_cls")
COMMON = [
    "--backbone",
    "resnet18",
    "--size",
    "64",
    "--workers",
    "0",
    "--device",
    "cpu",
    "--tensorboard",
    "false",
]


CORRUPT_ROW = 1  # make_tiny_dataset puts the corrupt file on the list's second row


def _rows_drawn(length: int, seed: int, epoch: int) -> list[int]:
    """Every row the two ranks' DistributedSamplers draw in an epoch, padding included."""
    drawn = []
    for rank in (0, 1):
        sampler = DistributedSampler(range(length), num_replicas=2, rank=rank, seed=seed)
        sampler.set_epoch(epoch)
        drawn += list(sampler)
    return drawn


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """Run every scenario in one torchrun launch; returns {name: scenario}."""
    root = tmp_path_factory.mktemp("ddp")
    scenarios = []
    for script in SCRIPTS:
        three = script == "train_demo_nclass3"
        # one manipulated + one authentic image, batch 1: each step, one rank's batch is
        # all authentic and the other's is not
        pair = make_tiny_dataset(
            root / f"{script}_pair", n_tampered=1, n_authentic=1, three_class=three, corrupt=False
        )
        # 9 rows (one corrupt, row 1) over 2 ranks: padded shards, a short last batch;
        # with seed 8 the shard padding repeats the corrupt row in epoch 2
        mixed = make_tiny_dataset(
            root / f"{script}_mixed", n_tampered=1, n_authentic=7, three_class=three
        )
        for name, data, extra, nan in (
            ("authentic_rank", pair, ["--batch_size", "1", "--epochs", "1"], {}),
            (
                "uneven_accumulate_bad_nan",
                mixed,
                ["--batch_size", "2", "--accumulate", "2", "--epochs", "2", "--seed", "8"],
                {"nan_rank": 1, "nan_step": 1},
            ),
        ):
            out = root / f"{script}_{name}"
            out.mkdir()
            argv = ["--train_list", str(data), "--val_list", str(data), *extra, *COMMON]
            scenarios.append(
                {"name": f"{script}:{name}", "script": script, "argv": argv, "out": str(out)} | nan
            )
        if script == "train_demo_cls":  # the learned image head, 3 image classes
            out = root / f"{script}_linear"
            out.mkdir()
            argv = ["--train_list", str(pair), "--val_list", str(pair), "--batch_size", "1"]
            argv += ["--epochs", "1", "--head", "linear", "--num_image_classes", "3", *COMMON]
            scenarios.append(
                {"name": f"{script}:linear", "script": script, "argv": argv, "out": str(out)}
            )
    spec = root / "scenarios.json"
    spec.write_text(json.dumps(scenarios))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(_free_port()),
        str(ROOT / "tests" / "ddp_worker.py"),
        str(spec),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return {s["name"]: {**s, "stderr": proc.stderr} for s in scenarios}


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("case", ["authentic_rank", "uneven_accumulate_bad_nan"])
def test_ddp_run_finishes_with_identical_ranks(ddp_runs, script, case):
    out = Path(ddp_runs[f"{script}:{case}"]["out"])
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / "rank1.json").read_text())
    assert r0["world"] == r1["world"] == 2
    assert r0["digest"] == r1["digest"]  # parameters and BatchNorm buffers
    saved = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state_digest(saved["model"]) == r0["digest"]
    rows = [json.loads(r) for r in (out / "log.jsonl").read_text().splitlines()]
    assert all(r["optimizer_steps"] >= 1 for r in rows)
    val = rows[-1]["val"]
    assert val["num_images"] == (2 if case == "authentic_rank" else 8)  # each sample once
    if case == "uneven_accumulate_bad_nan":
        assert [r["epoch"] for r in rows] == [1, 2]
        assert rows[0]["nonfinite_steps"] == 1  # rank 1's NaN skipped the step on both
        # the corrupt file once per epoch, although epoch 2 drew it twice (padding, on
        # the other rank): counted and named once
        assert _rows_drawn(9, seed=8, epoch=1).count(CORRUPT_ROW) == 2
        assert [r["skipped_samples"] for r in rows] == [1, 1]
        corrupt = str(Path(ddp_runs[f"{script}:{case}"]["argv"][1]).parent / "corrupt.jpg")
        lines = ddp_runs[f"{script}:{case}"]["stderr"].splitlines()
        named = sum(line.strip().startswith(f"skipped {corrupt}:") for line in lines)
        assert named == 2, ddp_runs[f"{script}:{case}"]["stderr"][-3000:]  # two epochs
        assert val["skipped_samples"] == 1


def test_ddp_linear_head_with_an_all_authentic_rank(ddp_runs):
    out = Path(ddp_runs["train_demo_cls:linear"]["out"])
    r0 = json.loads((out / "rank0.json").read_text())
    r1 = json.loads((out / "rank1.json").read_text())
    assert r0["digest"] == r1["digest"]
    saved = torch.load(out / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert state_digest(saved["model"]) == r0["digest"]
    assert saved["config"]["model"]["head"] == "linear"
