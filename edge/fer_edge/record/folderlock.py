"""One run per recording folder: a run that records holds an exclusive lock on ``.fer-edge.lock`` in the folder.

Start-up recovery takes every ``.part`` and ``events.jsonl`` it finds for what a crash left; in a folder that
another run is recording into, those are that run's open files. The lock is an ``flock``, which the kernel drops
when its holder exits or is killed, so a crash never leaves a stale lock. The file stays when the run ends:
deleting it could let two runs each lock a file of that name.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from pathlib import Path

from fer_edge.errors import RecordingError
from fer_edge.record.diskspace import FILE_MODE, FOLDER_MODE
from fer_edge.types import Face, Frame

log = logging.getLogger(__name__)

LOCK_NAME = ".fer-edge.lock"


class FolderLock:
    """The lock :func:`lock_folder` took, held until :meth:`close`. A pipeline sink that writes nothing, placed
    last among the sinks so that it is released after every file of the run is finished."""

    def __init__(self, path: Path, fd: int):
        self.path = path
        self._fd: int | None = fd

    def write(self, frame: Frame, faces: list[Face]) -> None:
        pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None


def lock_folder(directory: Path) -> FolderLock:
    """Lock ``directory`` (made if missing) for this process, or raise RecordingError naming the run that holds it."""
    path = directory / LOCK_NAME
    try:
        directory.mkdir(FOLDER_MODE, parents=True, exist_ok=True)
    except OSError as exc:
        raise RecordingError(f"cannot create output directory {directory}: {exc}") from None
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
    except PermissionError:
        try:  # another user's lock file: a read-only descriptor locks as well
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError as exc:
            raise RecordingError(f"output directory {directory} is not writable ({exc.strerror})") from None
    except OSError as exc:
        raise RecordingError(f"output directory {directory} is not writable ({exc.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise RecordingError(
            f"{directory.absolute()} is in use by another fer-edge run "
            f"({f'pid {holder}' if holder.isdigit() else 'pid unknown'}); give each run a folder of its own"
        ) from None
    except OSError as exc:  # a file system without locks (some network shares): recording matters more
        log.warning("recording: cannot lock %s (%s); another run in this folder would not be noticed", path, exc)
        return FolderLock(path, fd)
    with contextlib.suppress(OSError):  # the pid only makes the other run's message clearer
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return FolderLock(path, fd)


def folder_held(directory: Path) -> bool:
    """A run holds ``directory``'s lock now. Looks only: no lock file is made, and a shared lock taken for an
    instant is the whole test."""
    try:
        fd = os.open(directory / LOCK_NAME, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)
    return False
