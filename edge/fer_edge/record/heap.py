"""Handing the C heap's free pages back to the kernel once a segment is finished.

The service runs for months, and without this its resident memory crept up with every segment written (6-8
KB each; docs/ROBUSTNESS.md has the measurements): the encoder, the muxer, the index thread and the frame arrays
allocate from several threads, so from several glibc malloc arenas, and memory freed inside an arena stays resident
until the arena's top is free. ``malloc_trim(0)`` returns the free pages of every arena. It runs once a segment (the
video's, or the events file's when there is no video), on the recorder thread (about 0.5 ms there), never per
frame. Fixing glibc's mmap threshold instead kept memory no
flatter and cost about 10% more CPU, since every frame-sized array is then mapped afresh.

Only glibc has ``malloc_trim``; elsewhere (musl, macOS) this does nothing.
"""

from __future__ import annotations

import ctypes
import functools
from collections.abc import Callable


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the symbols the process has loaded: its C library's among them
    except (OSError, AttributeError, TypeError):  # no such function (musl, macOS); no CDLL(None) (Windows)
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return trim


def release_free_memory() -> bool:
    """Return the C heap's free pages to the kernel; whether any were returned (False where there is no
    ``malloc_trim``)."""
    trim = _malloc_trim()
    if trim is None:
        return False
    return bool(trim(0))
