"""Warnings whose cause can repeat at a client's or a broker's pace: one line per cause and interval, with a count.

A thousand malformed requests or garbage MQTT messages in a second would otherwise pass journald's burst limit,
which then hides the warnings that matter.
"""

from __future__ import annotations

import logging
import threading
import time

INTERVAL_S = 60.0


class RateLimitedLog:
    """``warning(cause, ...)`` logs the first time a cause is seen and then at most once per ``interval_s``,
    saying how many were held back meanwhile. Thread-safe."""

    def __init__(self, logger: logging.Logger, interval_s: float = INTERVAL_S) -> None:
        self._log = logger
        self._interval_s = interval_s
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warning(self, cause: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless ``cause`` was logged less than the interval ago; True when logged."""
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(cause, float("-inf")) < self._interval_s:
                self._held[cause] = self._held.get(cause, 0) + 1
                return False
            self._last[cause] = now
            held = self._held.pop(cause, 0)
        if held:
            self._log.warning(message + " (%d more like it in the last %d s)", *args, held, round(self._interval_s))
        else:
            self._log.warning(message, *args)
        return True
