"""Keep free disk space above a floor by deleting the oldest finished recordings.

A recording is a group of files sharing a stem ``<YYYYmmdd-HHMMSS>-<counter>``: the video ``<stem>.mp4``, its events
``<stem>.jsonl`` and, after an unrecoverable crash, ``<stem>.mp4.broken``. Only files with that name shape are ever
deleted; anything else in the directory is left alone.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Collection
from pathlib import Path

from fer_edge.errors import RecordingError
from fer_edge.record.naming import stem_time_or_none

log = logging.getLogger(__name__)

MB = 1024 * 1024
FILE_MODE = 0o640  # recordings show faces: owner and group only, whatever the umask of whoever runs it
FOLDER_MODE = 0o750


def create_private(path: Path, *, append: bool = False) -> int:
    """Open ``path`` for writing (truncated, or for appending), created ``FILE_MODE`` if new; returns the fd."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
    return os.open(path, flags, FILE_MODE)


# Before this (2024-01-01 UTC) the clock was not set (a Pi boots at 1970 without a saved time): a file written
# then has no known age.
CLOCK_SET_BY = 1704067200.0
WRITTEN_AHEAD_S = 86400.0  # a last write this far ahead of the clock was made while the clock ran ahead

FINISHED_RECORDING = re.compile(r"^(?P<stem>\d{8}-\d{6}-\d{4,})\.(?:mp4|jsonl|mp4\.broken)$")


def disk_free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def check_floor(directory: Path, min_free_bytes: int) -> None:
    """Refuse a floor the file system of ``directory`` can never meet: the guard would delete every recording,
    each one as soon as it is finished, and still never reach it."""
    total = shutil.disk_usage(directory).total
    if min_free_bytes >= total:
        raise RecordingError(
            f"recording.min_free_mb: {min_free_bytes / MB:.0f} MB cannot be kept free on "
            f"{directory}: its file system holds {total / MB:.0f} MB in all"
        )


def finished_recordings(directory: Path) -> list[tuple[str, list[Path]]]:
    """(stem, files) of every finished recording in ``directory``, oldest first (stems sort chronologically)."""
    groups: dict[str, list[Path]] = {}
    for path in directory.iterdir():
        match = FINISHED_RECORDING.match(path.name)
        if match and _names_a_time(match["stem"]) and path.is_file():
            groups.setdefault(match["stem"], []).append(path)
    return sorted(groups.items())


@functools.lru_cache(maxsize=8192)
def _names_a_time(stem: str) -> bool:
    """Whether ``stem`` starts with a real UTC time. A file named in that shape at no real time (month 13) is not a
    recording, and would stop what reads the time from its name: the recorder's start, retention, the index."""
    return stem_time_or_none(stem) is not None


class DiskGuard:
    """Deletes the oldest finished recordings while free space is below ``min_free_bytes``.

    ``free_bytes`` returns the free space of the recording file system (injectable for tests); ``check_due`` rate-limits
    the checks the recorder makes from its per-frame path.
    """

    def __init__(
        self,
        directory: Path,
        min_free_bytes: int,
        *,
        free_bytes: Callable[[], int] | None = None,
        check_interval_s: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.directory = directory
        self.min_free_bytes = min_free_bytes
        self._free_bytes = free_bytes or (lambda: disk_free_bytes(directory))
        self._check_interval_s = check_interval_s
        self._clock = clock
        self._next_check = float("-inf")
        self._said_unreachable = False
        self._said_unreadable = False
        self._said_undeletable = False
        self._said_unlistable = False

    def check_due(self) -> bool:
        now = self._clock()
        if now < self._next_check:
            return False
        self._next_check = now + self._check_interval_s
        return True

    def free_bytes(self) -> int:
        """The free space, 0 when it cannot be read."""
        free = self._read_free_bytes()
        return 0 if free is None else free

    def _read_free_bytes(self) -> int | None:
        """The free space, None when it cannot be read (said once until it can)."""
        try:
            free = self._free_bytes()
        except OSError as exc:  # an I/O error, a network share whose server is gone, the directory vanished
            if not self._said_unreadable:
                log.warning("cannot read free space of %s: %s; deleting no recording meanwhile", self.directory, exc)
            self._said_unreadable = True
            return None
        self._said_unreadable = False
        return free

    def make_room(self, keep_stems: Collection[str] = ()) -> bool:
        """Delete oldest recordings (never those in ``keep_stems``) until the floor is met; True if it is met, or
        if free space cannot be read: nothing is deleted on a guess (a write the disk then refuses is a write error).

        Nothing is deleted when deleting every candidate would still leave less than the floor free (other files
        fill the disk): that would only throw recordings away, each new one as soon as it is finished.
        """
        free = self._read_free_bytes()
        if free is None:
            return True
        if free >= self.min_free_bytes:
            self._said_unreachable = False
            return True
        try:
            found = [(stem, files) for stem, files in finished_recordings(self.directory) if stem not in keep_stems]
            now = time.time()
            candidates = [files for _, files in sorted(found, key=lambda recording: _written_order(recording, now))]
        except OSError as exc:  # said once until it can be listed again, not at every check
            if not self._said_unlistable:
                log.warning("cannot list %s: %s", self.directory, exc)
            self._said_unlistable = True
            return False
        self._said_unlistable = False
        deletable = sum(_size(path) for files in candidates for path in files)
        if free + deletable < self.min_free_bytes:
            if not self._said_unreachable:
                self._said_unreachable = True
                log.warning(
                    "disk: %.0f MB free, and deleting every old recording (%.0f MB) would not reach the "
                    "%.0f MB floor (recording.min_free_mb); deleting none",
                    free / MB,
                    deletable / MB,
                    self.min_free_bytes / MB,
                )
            return False
        for files in candidates:
            for path in files:
                try:
                    size = path.stat().st_size
                    path.unlink()
                except FileNotFoundError:
                    continue
                except OSError as exc:  # a file system turned read-only refuses them all: said once
                    if not self._said_undeletable:
                        log.warning("cannot delete old recording %s: %s", path, exc)
                    self._said_undeletable = True
                    continue
                self._said_undeletable = False
                log.info(
                    "disk: deleted old recording %s (%.1f MB) to keep %.0f MB free",
                    path.name,
                    size / MB,
                    self.min_free_bytes / MB,
                )
            free = self._read_free_bytes()
            if free is None or free >= self.min_free_bytes:
                return True
        return False


def _written_order(recording: tuple[str, list[Path]], now: float) -> tuple[float, str]:
    """Oldest first by when the files were last written, then by name. Names keep recording order only while
    the clock does: a Pi that booted at 1970 names what it records then as the oldest of all, though it is the
    newest. A last write before the clock was set has no known age: last, as the newest. A last write more than a
    day ahead of the clock was made on a clock that ran ahead and was set back since, so before everything written
    on the clock as it reads now: first, or the floor would delete the newest recordings before it."""
    stem, files = recording
    written = max((_mtime(path) for path in files), default=math.inf)
    if written > now + WRITTEN_AHEAD_S:
        return -math.inf, stem
    return (written if written >= CLOCK_SET_BY else math.inf), stem


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:  # deleted meanwhile
        return -math.inf


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def fsync_directory(directory: Path) -> None:
    """Make a rename or unlink in ``directory`` durable; best effort (some filesystems refuse)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
