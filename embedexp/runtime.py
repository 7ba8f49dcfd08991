"""Process-wide CPU settings that make training and encoding faster; applied by the command-line entry points.

glibc's malloc serves every block above a (dynamic, at most 32 MiB) threshold with a fresh mmap and unmaps it on
free, and gives the top of the heap back to the kernel once more than 128 KiB of it is free. A transformer step
allocates and frees the same large activation tensors every layer of every batch, so each one is page-faulted
and zero-filled by the kernel again. Keeping freed memory in the process (serve large blocks from the heap,
never trim it) removed that cost: ~10% of a MiniLM encoding batch (64 x 128 tokens) and ~20% of a batch-128
training step on 2 CPU cores, at a peak RSS within ~10% of before (docs/benchmarks.md).

Set EMBEDEXP_MALLOC_TUNING=0 to leave the allocator alone (e.g. when many runs share one machine's memory).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import platform

log = logging.getLogger(__name__)

_M_TRIM_THRESHOLD = -1  # mallopt parameter numbers, from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 1 << 30  # blocks up to 1 GiB come from the heap (reused), not from a fresh mmap each time
TRIM_THRESHOLD = 2**31 - 1  # (int max) never hand the free top of the heap back to the kernel
_applied: bool | None = None


def tune_cpu_allocator() -> bool:
    """Keep freed memory for reuse (glibc only; a no-op elsewhere or with EMBEDEXP_MALLOC_TUNING=0).

    Returns whether the settings are in effect. Idempotent.
    """
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get("EMBEDEXP_MALLOC_TUNING", "1") == "0" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1
    except (OSError, AttributeError):  # pragma: no cover - glibc always has mallopt
        ok = False
    if not ok:  # pragma: no cover
        log.debug("mallopt was refused; the allocator keeps its defaults")
    _applied = ok
    return ok


def allocator_tuned() -> bool:
    """Whether `tune_cpu_allocator` has put its settings in effect in this process."""
    return bool(_applied)
