"""The C heap trim that keeps the long-running service's resident memory flat."""

from __future__ import annotations

import ctypes
import os
import platform
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fer_edge.record import heap

# Frees 80 MB of heap blocks (each under glibc's mmap threshold, so they come from the heap) while a block
# allocated after them keeps free() from shrinking the heap; prints resident memory before and after the trim.
TRIM_CHILD = """
from fer_edge.record.heap import release_free_memory

def rss_kb():
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))

blocks = [bytearray(64 * 1024) for _ in range(1280)]
pin = bytearray(64 * 1024)
del blocks
before = rss_kb()
released = release_free_memory()
print(released, before, rss_kb())
"""


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_free_heap_pages_are_handed_back_to_the_kernel():
    env = dict(os.environ, PYTHONPATH=str(Path(heap.__file__).parents[2]))  # a fresh heap, this fer_edge
    result = subprocess.run([sys.executable, "-c", TRIM_CHILD], env=env, capture_output=True, text=True, check=True)
    released, before, after = result.stdout.split()
    assert released == "True"
    assert int(before) - int(after) > 60 * 1024, (before, after)  # of the 80 MB freed


def test_without_malloc_trim_it_does_nothing(monkeypatch):
    class NoTrim:  # musl's or macOS's C library
        def __init__(self, name):
            pass

    monkeypatch.setattr(ctypes, "CDLL", NoTrim)
    heap._malloc_trim.cache_clear()
    try:
        assert heap.release_free_memory() is False
    finally:
        heap._malloc_trim.cache_clear()


def test_events_alone_trim_once_per_finished_file_and_video_segments_leave_it_to_the_video_sink(tmp_path, monkeypatch):
    """With `recording.enabled: false` the events files are the only segments: the trim follows them."""
    from fer_edge.record import events
    from fer_edge.record.clock import SegmentClock
    from fer_edge.types import Frame

    trims = []
    monkeypatch.setattr(events, "release_free_memory", lambda: trims.append(1) or True)
    clock = SegmentClock(tmp_path, 1.0, 10.0)
    sink = events.EventsSink(clock)
    image = np.zeros((8, 8, 3), np.uint8)
    for index in range(35):  # 3.5 s at 10 fps: three files finished, the fourth open
        sink.write(Frame(image, index, index / 10), [])
    assert len(trims) == 3 and len(list(tmp_path.glob("2*.jsonl"))) == 3
    clock.video_stem, clock.video_start_ts = clock.next_stem(), 3.5  # the MP4 sink opened a segment
    sink.write(Frame(image, 35, 3.5), [])
    assert len(trims) == 3  # that rotation is the video sink's to trim
    sink.close()
