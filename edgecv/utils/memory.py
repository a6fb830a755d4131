"""Keeping freed memory in the process while PyTorch allocates and frees large tensors in a loop.

glibc's malloc serves every allocation above 32 MB with a fresh mmap and returns it to the kernel on free, so a loop
that makes the same 150 MB activations every step pays a page fault for every 4 KB of them every step. In the QAT
rung's block-wise reconstruction of EfficientNet-Lite0 on a 2-core EPYC, that was 40% of the CPU time (46 s of
system time in 118 s) and the early blocks ran 2.7x slower than with the memory kept (``keep_freed_memory``).
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import platform
from typing import Iterator

log = logging.getLogger("edgecv.memory")

# glibc's mallopt parameters (malloc.h) and their defaults
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4
_DEFAULT_TRIM, _DEFAULT_MMAP_MAX = 128 * 1024, 65536
_KEEP = (1 << 31) - 1  # mallopt takes a C int: the largest free top of the heap kept, 2 GB
_depth = 0  # blocks open now: only the outermost restores the defaults, so a nested loop cannot end the outer's


def _glibc():
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return None
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:
        return None


@contextlib.contextmanager
def keep_freed_memory() -> Iterator[bool]:
    """Within the block, large allocations come from the heap and freed memory stays there (glibc only; elsewhere
    nothing changes). For allocations made by the main thread: another thread allocates from its own arena,
    whose heaps glibc caps at 64 MB, so a block larger than that is still mmapped there (measured: a 64 MB array,
    0 bytes mmapped in the main thread, 64 MB in a thread). Yields whether the setting took. The defaults come
    back when the outermost block ends (blocks nest); what the heap holds then is returned to the kernel as glibc
    trims it."""
    global _depth
    libc = _glibc()
    took = bool(libc) and libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, _KEEP) == 1
    if libc and not took:
        log.debug("mallopt refused; freed memory goes back to the kernel as usual")
    _depth += 1
    try:
        yield took
    finally:
        _depth -= 1
        if libc and _depth == 0:
            libc.mallopt(_M_MMAP_MAX, _DEFAULT_MMAP_MAX)
            libc.mallopt(_M_TRIM_THRESHOLD, _DEFAULT_TRIM)
            libc.malloc_trim(0)
