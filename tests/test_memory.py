"""Freed memory kept for reuse (common/core/memory.py): the command-line tools' forwards
stop paying page faults, and the switch is off where it is turned off."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Runs, 30 times, a step shaped like a forward's large activations (three live 48 MB
# tensors, freed at the end) after asking for the setting; prints whether it took, the
# page faults of the last ten steps and the resident size in MB.
PROBE = """
import resource, torch
from common.core.memory import keep_freed_memory
kept = keep_freed_memory()
def step():
    a = torch.ones(12 * 1024 * 1024)
    b = a * 2
    c = b + a
    return float(c[0])
for _ in range(20):
    step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
rss_mb = int(open("/proc/self/statm").read().split()[1]) * 4096 // 2**20
print(kept, faults, rss_mb)
"""


def _probe(setting: str) -> tuple[bool, int, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MVSS_KEEP_FREED_MEMORY": setting}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_kept_memory_is_reused_without_page_faults():
    kept, faults, rss_mb = _probe("1")
    assert kept
    # Each step touches 144 MB (36,864 pages): kept, the blocks are reused once malloc's
    # heap has settled, and the heap stays bounded (about 0.6 GB measured).
    assert faults < 1000
    assert rss_mb < 1500
    off, faults_off, _ = _probe("0")
    assert not off
    assert faults_off > 10 * 30_000  # the default: every step faults its pages in again


def test_cpu_inference_commands_ask_for_it(monkeypatch):
    from common.inference import arguments

    calls = []
    monkeypatch.setattr(arguments, "keep_freed_memory", lambda: calls.append(1) or True)

    def fake_load(*args, **kwargs):
        return "model"

    monkeypatch.setattr(arguments.settings, "load_model", fake_load)
    import argparse

    import torch

    args = argparse.Namespace(model_path="x.pt", save_dir=".")
    assert arguments.load_model(args, None, torch.device("cpu")) == "model"
    assert calls == [1]
    assert arguments.load_model(args, None, torch.device("meta")) == "model"
    assert calls == [1]  # only CPU runs change the process's allocator
