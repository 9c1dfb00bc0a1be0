"""One run per recording folder: a run that records holds an exclusive lock on ``.fer-edge.lock`` in the folder.

Start-up recovery takes every ``.part`` and ``events.jsonl`` it finds for what a crash left; in a folder that
another run is recording into, those are that run's open files. The lock is an ``flock``, which the kernel drops
when its holder exits or is killed, so a crash never leaves a stale lock, and a lock file left behind is harmless:
the next run locks it and writes its own pid. The file stays when a run ends. A run that fails before it starts
(a camera missing, the web port taken) leaves the folder as it found it: it deletes the lock file and the folders
it made, the file while it still holds the lock. That is safe with runs racing for the folder because a run that
gets the lock checks that the path still names the file it locked, and starts over when it does not: a run that
opened the file just before it was deleted must not go on holding a file no later run can see.
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


LOCK_ATTEMPTS = 10  # each retry means another run deleted the file under us; it gives up before this


class FolderLock:
    """The lock :func:`lock_folder` took, held until :meth:`close`. A pipeline sink that writes nothing, placed
    last among the sinks so that it is released after every file of the run is finished."""

    def __init__(self, path: Path, fd: int, *, made_file: bool = False, made_folders: tuple[Path, ...] = ()):
        self.path = path
        self._fd: int | None = fd
        self._made_file = made_file
        self._made_folders = made_folders  # deepest first

    def write(self, frame: Frame, faces: list[Face]) -> None:
        pass

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases the lock
            self._fd = None

    def abandon(self) -> None:
        """Release the lock of a run that never started: the lock file and the folders made for it go, if this
        run made them and nothing else was put there meanwhile."""
        if self._fd is None:
            return
        if self._made_file:
            with contextlib.suppress(OSError):
                os.unlink(self.path)  # while the lock is held: see the module's note
        self.close()
        for folder in self._made_folders:
            try:
                folder.rmdir()
            except OSError:  # not empty (another run, a file recovered), or not ours to remove
                break


def missing_folders(directory: Path) -> tuple[Path, ...]:
    """The folders that making ``directory`` would create, deepest first."""
    missing = []
    folder = directory.absolute()
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return tuple(missing)


def open_lock_file(path: Path, directory: Path) -> tuple[int, bool]:
    """A descriptor on the lock file, made if missing, and whether this call made it."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE), True
    except FileExistsError:
        pass
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise RecordingError(f"output directory {directory} is not writable ({exc.strerror})") from None
    try:
        return os.open(path, os.O_RDWR | os.O_CLOEXEC), False
    except PermissionError:
        try:  # another user's lock file: a read-only descriptor locks as well
            return os.open(path, os.O_RDONLY | os.O_CLOEXEC), False
        except FileNotFoundError:
            raise
        except OSError as exc:
            raise RecordingError(f"output directory {directory} is not writable ({exc.strerror})") from None


def names_file(path: Path, fd: int) -> bool:
    """``path`` still names the file open on ``fd`` (no other run deleted or replaced it)."""
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (opened.st_dev, opened.st_ino)


def lock_folder(directory: Path) -> FolderLock:
    """Lock ``directory`` (made if missing) for this process, or raise RecordingError naming the run that holds it."""
    path = directory / LOCK_NAME
    made_folders = missing_folders(directory)
    for _ in range(LOCK_ATTEMPTS):
        try:
            directory.mkdir(FOLDER_MODE, parents=True, exist_ok=True)
        except OSError as exc:
            raise RecordingError(f"cannot create output directory {directory}: {exc}") from None
        try:
            fd, made_file = open_lock_file(path, directory)
        except FileNotFoundError:  # another run's failed start removed the folder between the two calls
            continue
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
        if not names_file(path, fd):  # locked a file another run deleted: lock the one the path names now
            os.close(fd)
            continue
        with contextlib.suppress(OSError):  # the pid only makes the other run's message clearer
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return FolderLock(path, fd, made_file=made_file, made_folders=made_folders)
    raise RecordingError(f"cannot lock {path}: other runs keep deleting it")


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
