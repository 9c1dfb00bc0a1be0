"""The frame loop: read -> gray -> detect/track -> classify/smooth -> privacy -> annotate -> sinks.

Stages are injected (built from config in :mod:`fer_edge.app`); this module imports no OpenCV, no
TFLite runtime and no camera library, so the loop is testable with fakes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from fer_edge.types import Box, Face, Frame, Prediction, SourceWaiting

log = logging.getLogger(__name__)

STAGES = ("read", "detect", "classify", "annotate", "record")
WATCHDOG_INTERVAL_S = 1.0


class Detector(Protocol):
    every_n_frames: int

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """The grayscale frame, shared by detector and classifier (one conversion per frame)."""

    def detect(self, gray: np.ndarray) -> list[Box]: ...


class Classifier(Protocol):
    def classify(self, gray: np.ndarray, box: Box) -> Prediction: ...


class Annotator(Protocol):
    def draw(self, image: np.ndarray, faces: list[Face]) -> None: ...


class Sink(Protocol):
    def write(self, frame: Frame, faces: list[Face]) -> None: ...

    def close(self) -> None: ...


@dataclass
class RunStats:
    frames: int = 0
    frames_with_faces: int = 0
    faces: int = 0
    label_counts: Counter = field(default_factory=Counter)  # shown label of every face
    elapsed: float = 0.0  # seconds of wall time in run()
    stage_seconds: dict[str, float] = field(default_factory=lambda: dict.fromkeys(STAGES, 0.0))

    @property
    def fps(self) -> float:
        return self.frames / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def stage_ms(self) -> dict[str, float]:
        """Mean milliseconds per frame of each stage, and ``total`` (their sum)."""
        n = max(1, self.frames)
        per_stage = {name: 1000.0 * seconds / n for name, seconds in self.stage_seconds.items()}
        per_stage["total"] = sum(per_stage.values())
        return per_stage

    def as_dict(self) -> dict:
        return {
            "frames": self.frames,
            "frames_with_faces": self.frames_with_faces,
            "faces": self.faces,
            "label_counts": dict(self.label_counts),
            "elapsed_s": round(self.elapsed, 3),
            "fps": round(self.fps, 2),
            "ms_per_frame": {k: round(v, 3) for k, v in self.stage_ms.items()},
        }


class Pipeline:
    """Runs the stages frame by frame until the source ends, ``max_frames`` or :meth:`stop`.

    Optional stages (signatures of :mod:`fer_edge.tracking`, :mod:`fer_edge.smoothing`,
    :mod:`fer_edge.privacy`, :mod:`fer_edge.notify`):

    - ``tracker``: ``update(boxes) -> [(id, box)]`` on detection frames, ``predict() -> [(id, box)]`` between,
      ``active_ids`` (the live tracks, whose smoothing state is kept), ``carried() -> [(id, box)]`` (every live
      track where it should be now, also those the detector just missed: privacy covers them too).
    - ``smoother``: ``update(track_id, prediction) -> Prediction``, ``forget(active_ids)``.
    - ``privacy``: ``privacy(image, boxes)`` anonymizes the faces in place before overlays are drawn.
    - ``notifier``: ``ready()``, ``watchdog()``, ``stopping()``, ``status(text)``.

    Stage timings fold tracking into ``detect``, smoothing into ``classify``, privacy into ``annotate``.
    """

    def __init__(
        self,
        source,
        detector: Detector,
        classifier: Classifier,
        annotator: Annotator,
        sinks: Sequence[Sink] = (),
        *,
        tracker=None,
        smoother=None,
        privacy: Callable[[np.ndarray, list[Box]], None] | None = None,
        notifier=None,
        status_interval_s: float = 5.0,
    ):
        self.source = source
        self.detector = detector
        self.classifier = classifier
        self.annotator = annotator
        self.sinks = list(sinks)
        self.tracker = tracker
        self.smoother = smoother
        self.privacy = privacy
        self.notifier = notifier
        self.status_interval_s = status_interval_s
        self.every_n_frames = max(1, detector.every_n_frames)
        self._stop = threading.Event()
        self._closed = False

    def stop(self) -> None:
        """Ask the loop to end after the current frame; safe from signal handlers and other threads."""
        self._stop.set()
        self.source.interrupt()  # a source waiting for a lost camera, or pacing a replay, stops waiting

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, max_frames: int | None = None) -> RunStats:
        stats = self.stats = RunStats()  # live: read by the web server and MQTT threads
        window = _StatusWindow(time.monotonic())
        last_boxes: list[tuple[int | None, Box]] = []
        self._last_watchdog = float("-inf")
        started = time.perf_counter()
        try:
            while not self._stop.is_set() and (max_frames is None or stats.frames < max_frames):
                t0 = time.perf_counter()
                frame = self.source.read()
                t1 = time.perf_counter()
                if frame is None:
                    break
                if isinstance(frame, SourceWaiting):
                    window = self._wait(frame, window)
                    continue
                if window.waiting is not None:  # the camera is back: status lines count from now
                    window = _StatusWindow(time.monotonic())
                gray = self.detector.prepare(frame.image)
                if stats.frames % self.every_n_frames == 0:
                    boxes = self.detector.detect(gray)
                    if self.tracker is not None:
                        last_boxes = self.tracker.update(boxes)
                    else:
                        last_boxes = [(None, box) for box in boxes]
                elif self.tracker is not None:
                    last_boxes = self.tracker.predict()
                t2 = time.perf_counter()
                faces = self._classify(gray, last_boxes)
                t3 = time.perf_counter()
                if self.privacy is not None:
                    self._anonymize(frame.image, faces)
                self.annotator.draw(frame.image, faces)
                t4 = time.perf_counter()
                for sink in self.sinks:
                    sink.write(frame, faces)
                t5 = time.perf_counter()

                durations = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)
                self._count(stats, faces, durations)
                window.add(faces, durations)
                if stats.frames == 1 and self.notifier is not None:
                    self.notifier.ready()
                now = time.monotonic()
                self._ping_watchdog(now)
                if now - window.start >= self.status_interval_s:
                    self._report(window.line(now, stats.frames))
                    window = _StatusWindow(now)
        finally:
            stats.elapsed = time.perf_counter() - started
            if self.notifier is not None:
                self.notifier.stopping()
        if window.frames:
            self._report(window.line(time.monotonic(), stats.frames))
        log.info(
            "processed %d frames (%d with faces, %d faces) in %.1f s, %.1f fps",
            stats.frames,
            stats.frames_with_faces,
            stats.faces,
            stats.elapsed,
            stats.fps,
        )
        return stats

    def _anonymize(self, image: np.ndarray, faces: list[Face]) -> None:
        """Every face that may be in the picture: the ones shown, and the tracks the detector missed on its
        last run but that are still alive (a face the Haar cascade lost for a frame is still there)."""
        boxes = [face.box for face in faces]
        if self.tracker is not None:
            boxes += [box for _, box in self.tracker.carried()]
        if boxes:
            self.privacy(image, list(dict.fromkeys(boxes)))

    def _classify(self, gray: np.ndarray, tracked: list[tuple[int | None, Box]]) -> list[Face]:
        height, width = gray.shape[:2]
        faces = []
        for track_id, box in tracked:
            box = box.clipped(width, height)  # carried boxes may drift past the edge
            if box.area == 0:
                continue
            prediction = self.classifier.classify(gray, box)
            smoothed = None
            if self.smoother is not None and track_id is not None:
                smoothed = self.smoother.update(track_id, prediction)
            faces.append(Face(box, prediction, track_id, smoothed))
        if self.smoother is not None:
            # Keep the state of tracks that are alive but missed this frame (the tracker knows them).
            self.smoother.forget(self.tracker.active_ids if self.tracker is not None else set())
        return faces

    @staticmethod
    def _count(stats: RunStats, faces: list[Face], durations: tuple[float, ...]) -> None:
        stats.frames += 1
        if faces:
            stats.frames_with_faces += 1
            stats.faces += len(faces)
            stats.label_counts.update(face.shown.label for face in faces if face.shown is not None)
        for name, seconds in zip(STAGES, durations):
            stats.stage_seconds[name] += seconds

    def _ping_watchdog(self, now: float) -> None:
        if self.notifier is not None and now - self._last_watchdog >= WATCHDOG_INTERVAL_S:
            self.notifier.watchdog()
            self._last_watchdog = now

    def _wait(self, waiting: SourceWaiting, window: _StatusWindow) -> _StatusWindow:
        """The source waits for its camera: the loop is alive (watchdog), and says why no frames come."""
        now = time.monotonic()
        self._ping_watchdog(now)
        if now - window.start >= self.status_interval_s or window.waiting is None:
            self._report(f"waiting: {waiting.reason}")
            window = _StatusWindow(now)
        window.waiting = waiting.reason
        return window

    def _report(self, line: str) -> None:
        log.info("%s", line)
        if self.notifier is not None:
            self.notifier.status(line)

    def close(self) -> None:
        """Close every sink (finalizing recordings), then the source. Raises the first failure after trying all."""
        if self._closed:
            return
        self._closed = True
        first_error: BaseException | None = None
        for closable in [*self.sinks, self.source]:
            try:
                closable.close()
            except Exception as exc:  # noqa: BLE001 - keep closing the others, re-raise below
                log.error("closing %s failed: %s", type(closable).__name__, exc)
                first_error = first_error or exc
        if first_error is not None:
            raise first_error


class _StatusWindow:
    """Counts between two status lines."""

    def __init__(self, start: float):
        self.start = start
        self.waiting: str | None = None  # set while the source waits for its camera
        self.frames = 0
        self.faces = 0
        self.seconds = [0.0] * len(STAGES)

    def add(self, faces: list[Face], durations: tuple[float, ...]) -> None:
        self.frames += 1
        self.faces += len(faces)
        for i, seconds in enumerate(durations):
            self.seconds[i] += seconds

    def line(self, now: float, total_frames: int) -> str:
        elapsed = max(now - self.start, 1e-9)
        n = max(1, self.frames)
        stages = " ".join(f"{name} {1000 * s / n:.1f}" for name, s in zip(STAGES, self.seconds))
        return (
            f"{self.frames / elapsed:.1f} fps, frames {total_frames}, faces {self.faces} "
            f"in last {self.frames}; ms/frame: {stages}"
        )
