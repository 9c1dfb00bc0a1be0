"""Power-loss safety for the files being written: a background thread fdatasyncs them once a second."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from fer_edge.record.diskspace import fsync_directory


class FileSyncer:
    """fdatasyncs the files being written once a second from a background thread (power-loss safety).

    fsync can stall for a long time on an SD card; doing it here keeps the frame loop running meanwhile.
    """

    def __init__(self, interval_s: float = 1.0):
        self._interval_s = interval_s
        self._paths: tuple[Path, ...] = ()
        self._directories_pending: set[Path] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, *paths: Path | None) -> None:
        with self._lock:
            new_paths = tuple(p for p in paths if p is not None)
            if set(new_paths) - set(self._paths):
                self._directories_pending.update(p.parent for p in new_paths)  # new names must survive too
            self._paths = new_paths
        if self._thread is None and self._paths:
            self._thread = threading.Thread(target=self._run, name="fer-edge-fsync", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=0.5)

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s):
            with self._lock:
                paths = self._paths
                directories, self._directories_pending = self._directories_pending, set()
            for directory in directories:
                fsync_directory(directory)
            for path in paths:
                try:
                    fd = os.open(path, os.O_RDONLY)
                except OSError:
                    continue  # renamed or removed meanwhile: the closer fsyncs it
                try:
                    os.fdatasync(fd)
                except OSError:
                    pass
                finally:
                    os.close(fd)
