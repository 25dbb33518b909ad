"""Process-wide settings every command starts with."""
from __future__ import annotations

import ctypes
import sys

# glibc mallopt(3) parameters
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4


def reuse_freed_memory() -> bool:
    """Make glibc malloc keep freed memory for reuse instead of returning it to the system.

    By default glibc maps big blocks (from 128 KiB up, and always from 32 MiB: a batch's
    activations) fresh from the kernel and unmaps them when freed, so each forward pass
    page-faults its outputs in again, one 4 KiB page at a time. On the project's CPU machine
    that was a quarter of offline export time (README, Measured figures). The price: the
    process keeps its peak heap. Returns False where it does not apply (not glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    # mallopt returns 1 on success; mmap is then never used for big blocks, and the heap's top
    # is trimmed only past 2 GiB of free space.
    done = [libc.mallopt(_M_MMAP_MAX, 0), libc.mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)]
    return all(done)
