"""Keeping freed memory inside the process while training on the CPU.

Every training step frees and re-allocates the same few hundred MB of activations and
gradients. glibc serves blocks that large with ``mmap`` and hands them back to the kernel on
``free``, so each step pays a page fault and a kernel zeroing for every 4 KiB of them again:
about a tenth of an AlexNet step on a CPU. Inside :func:`reuse_freed_memory` large blocks come
from the heap and freed memory stays there for the next step. The process's resident memory
then stays at its peak until the block ends, when the heap is trimmed again.

This is what an allocator such as jemalloc or tcmalloc, preloaded, does for the whole process.
The price is a higher peak of resident memory, since freed blocks of different sizes are not
always reused: ``RCNN_KEEP_FREED_MEMORY=0`` in the environment turns the setting off. Elsewhere
than on glibc (macOS, musl) the block changes nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from collections.abc import Iterator
from contextlib import contextmanager

# mallopt(3) parameters and glibc's defaults for them.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        return libc
    except (OSError, AttributeError):
        return None


@contextmanager
def reuse_freed_memory() -> Iterator[bool]:
    """Large blocks from the heap, and no trimming, for the duration of the block.

    Yields whether the setting took effect (it needs glibc).
    """
    libc = _glibc() if os.environ.get("RCNN_KEEP_FREED_MEMORY", "1") != "0" else None
    applied = bool(
        libc and libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1)
    )
    try:
        yield applied
    finally:
        if libc:
            libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
            libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
            libc.malloc_trim(0)
