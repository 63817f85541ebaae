"""Shared fixtures: small models (built once per session) and paths."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

REFERENCE_KEYS = ROOT.parent / "shared" / "reference" / "official_state_dict_keys.txt"
# a copy kept in the repository, beside the tests
LOCAL_REFERENCE_KEYS = ROOT / "tests" / "reference" / "official_state_dict_keys.txt"

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
# In-process calls of the inference commands would otherwise change this test process's
# allocator for the tests after them (tests/test_memory.py sets it in its own processes).
os.environ.setdefault("MVSS_KEEP_FREED_MEMORY", "0")


def build(**kwargs):
    from models import get_mvss

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return get_mvss(**kwargs)


@pytest.fixture(scope="session")
def default_model():
    torch.manual_seed(0)
    return build().eval()


@pytest.fixture(scope="session")
def tiny_model():
    torch.manual_seed(0)
    return build(backbone="resnet18").eval()


@pytest.fixture(scope="session")
def reference_keys() -> list[tuple[str, tuple[int, ...]]]:
    path = REFERENCE_KEYS if REFERENCE_KEYS.exists() else LOCAL_REFERENCE_KEYS
    rows = []
    for line in path.read_text().splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        key, shape = line.split(" ", 1)
        rows.append((key, tuple(int(s) for s in shape.strip("()").split(",") if s.strip())))
    return rows
