"""Names of recording files: ``YYYYmmdd-HHMMSS-NNNN`` stems in UTC, which sort in recording order."""

from __future__ import annotations

import calendar
import time
from pathlib import Path

PART_SUFFIX = ".mp4.part"


def stem_time(stem: str) -> float:
    """The UTC second a stem ``YYYYmmdd-HHMMSS-NNNN`` names."""
    return float(calendar.timegm(time.strptime(stem[:15], "%Y%m%d-%H%M%S")))


def stem_time_or_none(stem: str) -> float | None:
    """:func:`stem_time`, or None for a stem in that shape at no real time (a 13th month): a file this device did
    not name, which must not stop what reads the time from a name."""
    try:
        return stem_time(stem)
    except (ValueError, OverflowError):
        return None


def make_stem(directory: Path, wall_time: float, sequence: int) -> str:
    """``YYYYmmdd-HHMMSS-NNNN`` (UTC), bumping the counter until no file in ``directory`` uses the stem."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime(wall_time))
    while True:
        stem = f"{stamp}-{sequence:04d}"
        if not any((directory / f"{stem}{suffix}").exists() for suffix in (".mp4", PART_SUFFIX, ".jsonl")):
            return stem
        sequence += 1
