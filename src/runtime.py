"""Process-wide settings every command starts with."""
from __future__ import annotations

import ctypes
import sys

# glibc mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD_MAX = 32 << 20  # glibc refuses more on 64-bit


def reuse_freed_memory() -> bool:
    """Make glibc malloc keep freed blocks of up to 32 MiB for reuse.

    By default glibc maps a big block (from 128 KiB, a threshold it raises as such blocks
    are freed) fresh from the kernel, and gives the heap's free top back once it exceeds
    twice that threshold; either way the next batch page-faults its activations in again,
    one 4 KiB page at a time. Here blocks up to 32 MiB come from the heap from the start and
    the heap is trimmed only past 2 GiB free: the process keeps its peak heap. Larger blocks
    are still mapped and unmapped, since taking them from the heap too let fragmentation
    grow a variable-batch loop's memory 2.5x (docs/experiments.md, Benchmark).
    Returns False where it does not apply (not glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    done = [libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD_MAX), libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)]
    return all(done)  # mallopt returns 1 on success
