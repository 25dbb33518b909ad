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
    grow a variable-batch loop's memory 2.5x (docs/history/experiments.md, Benchmark).
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


def set_threads(n: int) -> int:
    """Use ``n`` intra-op CPU threads in torch (0: keep torch's default, one per core).

    On a machine whose cores are busy with other processes, torch's default can run several
    times slower than one thread: its threads wait on each other at every operator.
    Returns the number of threads now in use.
    """
    import torch

    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        from src.config import ConfigError
        raise ConfigError(f"threads: expected an int >= 0 (0 = torch's default), got {n!r}")
    if n > 0 and torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()
