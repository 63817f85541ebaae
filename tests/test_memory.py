"""Freed memory kept for reuse (common/core/memory.py): the command-line tools' forwards
stop paying page faults, and the switch is off where it is turned off."""

from __future__ import annotations

import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Runs, 30 times in the main thread and 30 in another, a step shaped like a forward's
# large activations (three live 48 MB tensors, freed at the end) after asking for the
# setting; prints whether it took, the page faults of the last ten steps of each thread
# and the resident size in MB. "Took" means blocks of 48 MB stay in the heap (glibc
# versions that refuse a 1 GiB threshold keep only 32 MiB).
PROBE = """
import resource, threading, torch
from common.core import memory
kept = memory.keep_freed_memory() and memory.kept_below > 48 * 2**20
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
def in_thread(out):  # as the web app's model thread
    for _ in range(20):
        step()
    start = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    for _ in range(10):
        step()
    out.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - start)
out = []
worker = threading.Thread(target=in_thread, args=(out,))
worker.start()
worker.join()
faults += out[0]
pages = int(open("/proc/self/statm").read().split()[1])
rss_mb = pages * resource.getpagesize() // 2**20
print(kept, faults, rss_mb)
"""


def _probe(setting: str) -> tuple[bool, int, int]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MVSS_KEEP_FREED_MEMORY": setting}
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0] == "True", int(out[1]), int(out[2])


def _huge_pages_always() -> bool:
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.exists() and "[always]" in path.read_text()


@pytest.mark.skipif(not GLIBC, reason="mallopt is glibc's")
def test_kept_memory_is_reused_without_page_faults():
    kept, faults, rss_mb = _probe("1")
    if not kept:
        pytest.skip("this glibc keeps only blocks up to 32 MiB")
    # Each step touches 144 MB: kept, the blocks are reused once malloc's heap has settled,
    # and the heap stays bounded (about 0.6 GB measured).
    assert faults < 1000
    assert rss_mb < 1500
    off, faults_off, _ = _probe("0")
    assert not off
    if not _huge_pages_always():  # 2 MB pages would fault 512 times less
        pages = 144 * 2**20 // resource.getpagesize()
        assert faults_off > 10 * pages // 2  # the default: every step faults its pages again


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
