"""Keep freed memory in the process, so that CPU inference reuses it without page faults.

Why: a CPU forward allocates its activations afresh. glibc's malloc hands allocations
above its mmap threshold (128 KiB, rising to at most 32 MiB as it goes) to the kernel
with ``mmap`` and gives them back with ``munmap`` when freed, so every forward touches new
pages and the kernel zeroes each one on its first touch: about 25,000 page faults (100 MB)
per ResNet-50 forward at 512², 10–15 % of the fast path's time (measured, docs/performance.md).
Raising the mmap threshold and the trim threshold with ``mallopt`` keeps freed blocks in
malloc's own heap for the next forward: no page faults after the first, and a resident
size that stays at the largest forward's peak instead of shrinking between images (about
+0.4 GB at 512²). This is what jemalloc and tcmalloc (``LD_PRELOAD``) do for PyTorch in
Intel's tuning guides, without preloading anything.

It changes the whole process, so the command-line tools ask for it (``keep_freed_memory``)
and a library call never does it behind the caller's back. ``MVSS_KEEP_FREED_MEMORY=0``
turns it off; elsewhere than glibc (macOS, musl, Windows) it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import os
import platform

ENV = "MVSS_KEEP_FREED_MEMORY"
# mallopt parameters (glibc's malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
# Blocks up to this size come from malloc's heap and stay there when freed (larger ones,
# rarer than any activation at the sizes these tools run, are still given back).
MMAP_THRESHOLD = 1 << 30
# Never give the top of the heap back to the kernel (the largest value mallopt takes).
TRIM_THRESHOLD = 2**31 - 1


def _disabled() -> bool:
    return os.environ.get(ENV, "1").strip().lower() in ("0", "false", "no", "off")


@functools.cache
def keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks for reuse (see the module docstring);
    True when it took effect. Idempotent; a no-op off glibc or with
    ``MVSS_KEEP_FREED_MEMORY=0``."""
    if _disabled() or platform.libc_ver()[0] != "glibc":
        return False
    name = ctypes.util.find_library("c") or "libc.so.6"
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(
        mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    )
