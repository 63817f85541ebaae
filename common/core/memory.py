"""Keep freed memory in the process, so that CPU inference reuses it without page faults.

Why: a CPU forward allocates its activations afresh. glibc's malloc hands allocations
above its mmap threshold (128 KiB, rising to at most 32 MiB as it goes) to the kernel
with ``mmap`` and gives them back with ``munmap`` when freed, so every forward touches new
pages and the kernel zeroes each one on its first touch: about 25,000 page faults (100 MB)
per ResNet-50 forward at 512², 9–16 % of the fast path's time (docs/performance.md).
Raising the mmap and trim thresholds with ``mallopt``, and serving every thread from the
one heap, keeps freed blocks in malloc's heap for the next forward: no page faults after
the first, and a resident size that stays at the largest forward's peak instead of
shrinking between images (about +0.4 GB at 512²). jemalloc and tcmalloc (``LD_PRELOAD``),
which Intel's tuning guides advise for PyTorch, do the same; this needs no preloading.

It changes the whole process, so the command-line tools ask for it (``keep_freed_memory``)
and a library call never does it behind the caller's back. ``MVSS_KEEP_FREED_MEMORY=0``
turns it off; elsewhere than glibc (macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import os
import platform

ENV = "MVSS_KEEP_FREED_MEMORY"
# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_ARENA_MAX = -8
# Blocks up to this size come from malloc's heap and stay there when freed (larger ones,
# rarer than any activation at the sizes these tools run, are still given back). glibc
# before 2.35 or so refuses more than 32 MiB: then 32 MiB, and blocks above it still fault.
MMAP_THRESHOLDS = (1 << 30, 32 << 20)
# Never give the top of the heap back to the kernel (the largest value mallopt takes).
TRIM_THRESHOLD = 2**31 - 1
# The mmap threshold that took effect (0: none), for tests and reports.
kept_below = 0


def _disabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off")


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse (see the module docstring);
    True when it took effect. Idempotent; a no-op off glibc or with
    ``MVSS_KEEP_FREED_MEMORY=0``. Every thread then allocates from the main heap (one
    malloc arena): a thread's own arena would still map blocks above its 64 MiB heap
    afresh and give emptied heaps back (the web app runs the model on a thread of its
    own). Call it before starting threads: one that has allocated keeps its arena."""
    global kept_below
    if _disabled() or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    if not (mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) and mallopt(_M_ARENA_MAX, 1)):
        return False
    kept_below = next((t for t in MMAP_THRESHOLDS if mallopt(_M_MMAP_THRESHOLD, t)), 0)
    return kept_below > 0
