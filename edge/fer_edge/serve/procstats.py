"""This process's CPU time, memory, descriptors and start time, as Prometheus' standard ``process_*`` metrics.

Read from ``/proc/self`` (Linux, where fer-edge runs); elsewhere the values are missing and the metrics left out.
"""

from __future__ import annotations

import functools
import os
import resource
from pathlib import Path

PROC = Path("/proc/self")


@functools.cache  # the boot time does not change while this process runs: read once, not per scrape
def _boot_time() -> float | None:
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("btime "):
                return float(line.split()[1])
    except (OSError, ValueError):
        pass
    return None


def process_stats(proc: Path = PROC) -> dict[str, int | float]:
    """``cpu_seconds_total``, ``resident_memory_bytes``, ``virtual_memory_bytes``, ``open_fds``, ``max_fds`` and
    ``start_time_seconds`` (Unix time), each where it can be read."""
    out: dict[str, int | float] = {}
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        # The fields after the command name, which may hold spaces and parentheses: split after its last ')'.
        fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        out["cpu_seconds_total"] = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
        out["virtual_memory_bytes"] = int(fields[20])
        out["resident_memory_bytes"] = int(fields[21]) * resource.getpagesize()
        boot = _boot_time()
        if boot is not None:
            out["start_time_seconds"] = boot + int(fields[19]) / ticks
    except (OSError, IndexError, ValueError):
        pass
    try:
        out["open_fds"] = len(os.listdir(proc / "fd"))
    except OSError:
        pass
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        out["max_fds"] = soft
    return out
