"""Keeping freed image memory from lingering in the process (glibc only; elsewhere a no-op).

Decoding a picture takes tens of megabytes for a moment. glibc's allocator would keep such
blocks: it gives every thread its own arena (dozens with a pool of fetch threads) and, once a
large block has been freed, raises its threshold for returning blocks to the system. The
process's peak memory then grows with the number of threads rather than with the decode
budget. Two arenas and a fixed threshold (blocks of 1 MiB and more are mapped and returned
on free) keep it to the budget.
"""

from __future__ import annotations

import ctypes
import ctypes.util

M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def limit_allocator_growth(arenas: int = 2, mmap_threshold: int = 1 << 20) -> bool:
    """Returns whether glibc accepted the settings."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_ARENA_MAX, arenas)) and bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold))
