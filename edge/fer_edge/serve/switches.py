"""Runtime switches (recording, privacy) that Home Assistant can flip while the loop runs.

The MQTT thread sets them; the loop's stages only read a flag, so a switch never waits on the broker.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Protocol

import numpy as np

from fer_edge.serve.ratelog import RateLimitedLog
from fer_edge.types import Box, Face, Frame

log = logging.getLogger(__name__)

NAMES = ("recording", "privacy")


class Switches:
    """Named on/off flags, thread-safe; listeners hear every change (called on the setter's thread).

    A switch named in ``unavailable`` (what the config turned off, e.g. video recording) stays off: setting it on
    is refused with a warning (one a minute, however many come), so it is reported off.
    """

    def __init__(self, *, unavailable: dict[str, str] | None = None, **initial: bool):
        unknown = (set(initial) | set(unavailable or {})) - set(NAMES)
        if unknown:
            raise ValueError(f"unknown switch: {', '.join(sorted(unknown))}")
        self._lock = threading.Lock()
        self._unavailable = dict(unavailable or {})  # name -> why
        self._values = {name: bool(initial.get(name, False)) and name not in self._unavailable for name in NAMES}
        self._listeners: list[Callable[[str, bool], None]] = []
        self._warn = RateLimitedLog(log)  # a refused "on" comes at the pace of whoever may publish the command

    def __getitem__(self, name: str) -> bool:
        return self._values[name]  # one dict read: atomic, no lock on the loop's path

    def available(self, name: str) -> bool:
        return name in self._values and name not in self._unavailable

    def set(self, name: str, on: bool) -> bool:
        """Set ``name``; True when that changed it."""
        if name not in self._values:
            raise KeyError(name)
        if on and name in self._unavailable:
            self._warn.warning(name, "%s switched on, but %s: it stays off", name, self._unavailable[name])
            return False
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

    def __init__(self, anonymize: Callable[[np.ndarray, list[Box]], None], switches: Switches):
        self._anonymize = anonymize
        self._switches = switches

    @property
    def active(self) -> bool:
        return self._switches["privacy"]

    def __call__(self, image: np.ndarray, boxes: list[Box]) -> None:
        if self._switches["privacy"]:
            self._anonymize(image, boxes)


class SwitchableRecorder(Protocol):
    """The recording sink as the switches drive it (:class:`~fer_edge.record.worker.RecorderThread`)."""

    @property
    def recording(self) -> bool: ...
    def write(self, frame: Frame, faces: list[Face]) -> None: ...
    def set_video(self, on: bool) -> None: ...
    def discard_preroll(self) -> None: ...
    def source_lost(self) -> None: ...
    def close(self) -> None: ...


class SwitchedRecorder:
    """The recording sink, following the switches as the loop sees them, frame by frame.

    ``recording`` switches the video only: the events log goes on. ``privacy`` switched on discards the pre-roll
    held so far, this frame's included (privacy may have missed it by a hair); frames after it are anonymized
    before they get here. Both only queue a command for the recorder thread: the loop never waits for a file.
    """

    def __init__(self, recorder: SwitchableRecorder, switches: Switches):
        self.recorder = recorder
        self._switches = switches
        self._video = switches["recording"]
        self._privacy = switches["privacy"]
        if not self._video:
            recorder.set_video(False)

    @property
    def recording(self) -> bool:
        return self.recorder.recording

    def write(self, frame: Frame, faces: list[Face]) -> None:
        video, privacy = self._switches["recording"], self._switches["privacy"]
        if video != self._video:
            self._video = video
            self.recorder.set_video(video)
        self.recorder.write(frame, faces)
        if privacy != self._privacy:
            self._privacy = privacy
            if privacy:
                self.recorder.discard_preroll()

    def source_lost(self) -> None:
        self.recorder.source_lost()

    def close(self) -> None:
        self.recorder.close()
