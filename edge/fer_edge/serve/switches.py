"""Runtime switches (recording, privacy) that Home Assistant can flip while the loop runs.

The MQTT thread sets them; the loop's stages only read a flag, so a switch never waits on the broker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from fer_edge.errors import FerEdgeError

log = logging.getLogger(__name__)

NAMES = ("recording", "privacy")


class Switches:
    """Named on/off flags, thread-safe; listeners hear every change (called on the setter's thread)."""

    def __init__(self, **initial: bool):
        unknown = set(initial) - set(NAMES)
        if unknown:
            raise ValueError(f"unknown switch: {', '.join(sorted(unknown))}")
        self._lock = threading.Lock()
        self._values = {name: bool(initial.get(name, False)) for name in NAMES}
        self._listeners: list[Callable[[str, bool], None]] = []

    def __getitem__(self, name: str) -> bool:
        return self._values[name]  # one dict read: atomic, no lock on the loop's path

    def set(self, name: str, on: bool) -> bool:
        """Set ``name``; True when that changed it."""
        if name not in self._values:
            raise KeyError(name)
        with self._lock:
            changed = self._values[name] != bool(on)
            self._values[name] = bool(on)
            listeners = list(self._listeners)
        if changed:
            log.info("%s switched %s", name, "on" if on else "off")
            for listener in listeners:
                listener(name, bool(on))
        return changed

    def as_dict(self) -> dict[str, bool]:
        return dict(self._values)

    def listen(self, listener: Callable[[str, bool], None]) -> None:
        with self._lock:
            self._listeners.append(listener)


class SwitchedPrivacy:
    """The privacy stage, applied while the ``privacy`` switch is on."""

    def __init__(self, anonymize: Callable, switches: Switches):
        self._anonymize = anonymize
        self._switches = switches

    @property
    def active(self) -> bool:
        return self._switches["privacy"]

    def __call__(self, image, boxes) -> None:
        if self._switches["privacy"]:
            self._anonymize(image, boxes)


class SwitchedRecorder:
    """The recording sink while the ``recording`` switch is on. Switched off, the open recording is finished
    (the loop's thread closes it, as the recorder wants); switched on again, a new recorder starts."""

    def __init__(self, recorder, make_recorder: Callable[[], object], switches: Switches):
        self._recorder = recorder
        self._make_recorder = make_recorder
        self._switches = switches

    @property
    def recorder(self):
        return self._recorder

    @property
    def recording(self) -> bool:
        recorder = self._recorder
        return bool(recorder is not None and getattr(recorder, "recording", False))

    def write(self, frame, faces) -> None:
        if self._switches["recording"]:
            if self._recorder is None:
                try:
                    self._recorder = self._make_recorder()
                except (FerEdgeError, OSError, RuntimeError) as exc:  # the disk went away; no thread to be had
                    log.error("recording switched on, but cannot record: %s", exc)
                    self._switches.set("recording", False)
                    return
            self._recorder.write(frame, faces)
        elif self._recorder is not None:
            self.close()

    def close(self) -> None:
        recorder, self._recorder = self._recorder, None
        if recorder is not None:
            recorder.close()
