"""Keeping freed memory inside the process while training on the CPU.

Every training step frees and re-allocates the same few hundred MB of activations and
gradients. glibc serves blocks that large with ``mmap`` and hands them back to the kernel on
``free``, so each step pays a page fault and a kernel zeroing for every 4 KiB of them again:
about a tenth of an AlexNet step on a CPU. Inside :func:`reuse_freed_memory` glibc stops using
``mmap`` (the main thread's large blocks, where the training step allocates, come from the
heap; other threads' arenas may still fall back to it) and stops trimming the heap, so freed
memory is there for the next step. When the outermost block ends, both settings go back to
glibc's defaults and the heap is trimmed; glibc's self-adjusting mmap threshold stays off, and
``MALLOC_*_`` variables set for the process are overridden while the block runs.

This is what an allocator such as jemalloc or tcmalloc, preloaded, does for the whole process.
The price is a higher peak of resident memory, since freed blocks of different sizes are not
always reused: ``RCNN_KEEP_FREED_MEMORY=0`` in the environment turns the setting off. On a GPU
it would only cost memory, so the training loop uses it on the CPU alone. Elsewhere than on
glibc (macOS, musl) the block changes nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager

# mallopt(3) parameters and glibc's defaults for them.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 65536

_lock = threading.Lock()
_depth = 0  # nested blocks: only the outermost one restores


def _glibc():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
    except (OSError, AttributeError):
        return None
    libc.mallopt.argtypes, libc.mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    libc.malloc_trim.argtypes, libc.malloc_trim.restype = [ctypes.c_size_t], ctypes.c_int
    return libc


def _set(libc, mmap_max: int, trim_threshold: int) -> bool:
    return bool(
        libc.mallopt(M_MMAP_MAX, mmap_max) and libc.mallopt(M_TRIM_THRESHOLD, trim_threshold)
    )


@contextmanager
def reuse_freed_memory(enabled: bool = True) -> Iterator[bool]:
    """Large blocks from the heap, and no trimming, for the duration of the block.

    Args:
        enabled: False makes the block do nothing (e.g. when training on a GPU).

    Yields whether the setting is in effect (it needs glibc).
    """
    global _depth
    wanted = enabled and os.environ.get("RCNN_KEEP_FREED_MEMORY", "1") != "0"
    libc = _glibc() if wanted else None
    if libc is None:
        yield False
        return
    with _lock:
        _depth += 1
        applied = _set(libc, 0, 2**31 - 1)
    try:
        yield applied
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _set(libc, DEFAULT_MMAP_MAX, DEFAULT_TRIM_THRESHOLD)
                libc.malloc_trim(0)


def release_freed_memory() -> None:
    """Hands the freed pages of every glibc arena back to the kernel (``malloc_trim``).

    Detection frees a chunk's features (hundreds of MB, of another size each chunk) and
    allocates the next one's: with glibc's self-adjusting mmap threshold, blocks of up to 32 MB
    then come from the arenas, whose freed pages stay resident, and the process grows chunk
    after chunk. Trimming after each chunk keeps it at one chunk's working set; it takes
    milliseconds. Nothing happens elsewhere than on glibc, or inside :func:`reuse_freed_memory`,
    whose point is to keep the pages."""
    libc = _glibc()
    if libc is not None and _depth == 0:
        libc.malloc_trim(0)
