"""Decode ahead: a thread that produces the next few items (decoded images) while the loop works on the last one.

OpenCV's and FFmpeg's decoders release the GIL, so on a second core the next frame decodes while the loop detects,
classifies and annotates the current one. The queue is small (a few frames: 1080p BGR images are 6 MB each) and
the thread waits for room, so nothing is skipped: the consumer gets every item in order, then the end (``None``),
or the exception the producer raised, at the place it was raised. A live source (``keep_newest``) never waits:
when the loop falls behind, the oldest frame waiting is dropped (and counted), so the loop always gets the
freshest frames the camera has, as picamera2 hands out its latest.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

DEPTH = 3  # frames decoded ahead
JOIN_S = 5.0  # the longest close() waits for a decode in progress


class _End:
    """What the producer left at the end: nothing more (``error`` None), or the exception it raised."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error


class Prefetcher(Generic[T]):
    """Runs ``produce`` on a thread of its own, up to ``depth`` results ahead of :meth:`get`.

    ``produce`` returns the next item, or None at the end; it is called on the thread only (it may own a
    decoder that is not thread-safe). The thread starts at the first :meth:`get`.
    """

    def __init__(
        self,
        produce: Callable[[], T | None],
        *,
        depth: int = DEPTH,
        name: str = "fer-edge-decode",
        keep_newest: bool = False,
    ) -> None:
        if depth < 1:
            raise ValueError(f"depth must be at least 1, got {depth}")
        self._produce = produce
        self.depth = depth
        self._name = name
        self._items: deque[T | _End] = deque()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread: threading.Thread | None = None
        self.keep_newest = keep_newest
        self.dropped = 0  # items dropped for newer ones (keep_newest)

    def start(self) -> None:
        """Start decoding ahead (the first :meth:`get` does this too)."""
        with self._cond:
            if self._thread is None and not self._stopped:
                self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
                self._thread.start()

    def get(self) -> T | None:
        """The next item; None at the end or once stopped; raises what ``produce`` raised, once, in its place."""
        self.start()
        with self._cond:
            self._cond.wait_for(lambda: bool(self._items) or self._stopped)
            if self._stopped or not self._items:
                return None
            item = self._items[0]
            if isinstance(item, _End):
                if item.error is not None:
                    error, item.error = item.error, None  # later calls see the end
                    raise error
                return None
            self._items.popleft()
            self._cond.notify_all()  # the producer waiting for room
            return item

    def stop(self) -> None:
        """Wake a waiting :meth:`get` (it returns None) and end the thread after the item it is producing."""
        with self._cond:
            self._stopped = True
            self._items.clear()
            self._cond.notify_all()

    def close(self, timeout: float = JOIN_S) -> bool:
        """Stop and join the thread; False when it is still inside ``produce`` after ``timeout`` s."""
        self.stop()
        thread = self._thread
        if thread is None:
            return True
        thread.join(timeout)
        if thread.is_alive():
            log.warning("%s: still decoding %.0f s after close; left to end on its own", self._name, timeout)
            return False
        return True

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self.keep_newest or len(self._items) < self.depth or self._stopped)
                if self._stopped:
                    return
            try:
                item = self._produce()
            except Exception as exc:  # noqa: BLE001 - raised by get() on the consumer, in order
                self._put(_End(exc))
                return
            if item is None:
                self._put(_End())
                return
            self._put(item)

    def _put(self, item: T | _End) -> None:
        with self._cond:
            if not self._stopped:
                if self.keep_newest and len(self._items) >= self.depth and not isinstance(item, _End):
                    self._items.popleft()
                    self.dropped += 1
                self._items.append(item)
                self._cond.notify_all()
