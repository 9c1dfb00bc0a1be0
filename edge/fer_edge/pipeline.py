"""The frame loop: read -> detect/track -> classify/smooth -> privacy -> annotate -> sinks.

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

from fer_edge.types import Box, Detection, Face, Frame, Prediction, SourceWaiting, Track, bgr_image
from fer_edge.vision.privacy import BlurHold
from fer_edge.vision.schedule import DetectionPlan, DetectionSchedule, FaceScan
from fer_edge.vision.smoothing import NullSmoother
from fer_edge.vision.tracking import NullTracker

log = logging.getLogger(__name__)

STAGES = ("read", "detect", "classify", "annotate", "record")
WATCHDOG_INTERVAL_S = 1.0


class Source(Protocol):
    fps: float
    size: tuple[int, int]  # (width, height)

    def read(self) -> Frame | SourceWaiting | None:
        """The next frame; None at the end of the stream (or once interrupted); a live source that
        lost its camera returns :class:`SourceWaiting` between retries (every few seconds)."""

    def interrupt(self) -> None:
        """End the stream: the next read() returns None, and one waiting (for a lost camera, or
        pacing a real-time replay) returns soon. Safe from signal handlers and other threads."""

    def close(self) -> None: ...


class Detector(Protocol):
    def detect(self, image: np.ndarray, regions: list[Box] | None = None) -> list[Detection]:
        """Faces in the whole frame (``regions=None``) or only inside ``regions``.

        A detector may also have ``privacy_scan(image, regions=None) -> FaceScan``, used while privacy is on: a
        whole-frame scan (``regions=None``) or a cheap sweep of the whole frame plus ``regions``, which also
        reports the faces too unsure to track. Without it every privacy frame gets a whole-frame scan."""


class Classifier(Protocol):
    @property
    def runtime(self) -> str:
        """The TFLite runtime's module name (reported by ``fer-edge bench``)."""

    def classify(self, image: np.ndarray, face: Detection) -> Prediction: ...


class Tracker(Protocol):
    @property
    def active_ids(self) -> set[int]: ...

    def update(self, detections: list[Detection], image: np.ndarray | None = None) -> list[Track]: ...

    def predict(self) -> list[Track]: ...

    def carried(self) -> list[Box]: ...

    def reset(self) -> None: ...  # end every track at once (a scene cut); the next faces get new ids


class CutDetector(Protocol):
    def cut(self, image: np.ndarray) -> bool: ...  # whether the image shows another shot than the frame before


class Smoother(Protocol):
    def update(self, track_id: int, prediction: Prediction, t: float) -> Prediction | None: ...

    def forget(self, active_ids: set[int]) -> None: ...


class Annotator(Protocol):
    def draw(self, image: np.ndarray, faces: list[Face]) -> None: ...


class Notifier(Protocol):
    # The loop ignores what they return (the service notifier's says whether the message was delivered).
    def ready(self) -> object: ...

    def watchdog(self) -> object: ...

    def stopping(self) -> object: ...

    def status(self, text: str) -> object: ...

    def close(self) -> None: ...


class Sink(Protocol):
    def write(self, frame: Frame, faces: list[Face]) -> None: ...

    def close(self) -> None: ...


class _NoNotifier:
    def ready(self) -> None:
        pass

    def watchdog(self) -> None:
        pass

    def stopping(self) -> None:
        pass

    def status(self, text: str) -> None:
        pass

    def close(self) -> None:
        pass


@dataclass
class _Classified:
    t: float
    prediction: Prediction | None
    smoothed: Prediction | None


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

    ``schedule`` decides per frame between a whole-frame scan, a search around the tracked faces and carrying
    them (:class:`DetectionSchedule`). Each tracked face is classified at most every ``classify_every_s``
    seconds of frame time and shows its latest result in between; a face turned further than ``max_turn``
    (its detector gives keypoints) is not classified and keeps its last shown label. ``privacy(image, boxes)``
    anonymizes faces in place before overlays and sinks; while it is on (one with an ``active`` attribute, the
    runtime switch, while that is true) every frame is looked at whole (a scan or the detector's cheap sweep),
    and faces too unsure to track are anonymized too. At a scene cut (``cuts``) every
    track and its smoothing ends and the frame is scanned whole: no track id spans a cut. A lost camera ends
    every track too, and a sink with a ``source_lost()`` method hears of it (the live view, MQTT: nobody is
    shown present while nothing is seen); the first frame after it counts as a cut.

    Stage timings fold tracking into ``detect``, smoothing into ``classify``, privacy into ``annotate``.
    """

    def __init__(
        self,
        source: Source,
        detector: Detector,
        classifier: Classifier,
        annotator: Annotator,
        sinks: Sequence[Sink] = (),
        *,
        tracker: Tracker | None = None,
        smoother: Smoother | None = None,
        schedule: DetectionSchedule | None = None,
        classify_every_s: float = 0.0,
        max_turn: float = 1.0,
        privacy: Callable[[np.ndarray, list[Box]], None] | None = None,
        privacy_hold_s: float = 0.0,
        cuts: CutDetector | None = None,
        notifier: Notifier | None = None,
        status_interval_s: float = 5.0,
        status_extra: Callable[[], str | None] | None = None,
    ):
        self.source = source
        self.detector = detector
        self.classifier = classifier
        self.annotator = annotator
        self.sinks = list(sinks)
        self.tracker: Tracker = tracker or NullTracker()
        self.smoother: Smoother = smoother or NullSmoother()
        self.schedule = schedule or DetectionSchedule()
        self.classify_every_s = classify_every_s
        self.max_turn = max_turn
        self.privacy = privacy
        self.privacy_hold = BlurHold(privacy_hold_s)
        self.cuts = cuts
        self.notifier: Notifier = notifier or _NoNotifier()
        self.status_interval_s = status_interval_s
        self.status_extra = status_extra  # a sink's own news for the status line (e.g. frames it dropped)
        self.stats = RunStats()
        self._classified: dict[int, _Classified] = {}
        self._unsure: list[Box] = []  # this frame's faces too unsure to track, blurred while privacy is on
        self._stop = threading.Event()
        self._closed = False
        self._last_watchdog = float("-inf")
        self._announced_ready = False  # READY=1 sent: at the first frame, or the first wait for a camera

    def stop(self) -> None:
        """Ask the loop to end after the current frame; safe from signal handlers and other threads."""
        self._stop.set()
        self.source.interrupt()  # a source waiting for a lost camera, or pacing a replay, stops waiting

    @property
    def privacy_on(self) -> bool:
        """Whether this frame's faces get anonymized (read per frame: a runtime switch counts at once)."""
        return self.privacy is not None and bool(getattr(self.privacy, "active", True))

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def run(self, max_frames: int | None = None) -> RunStats:
        stats = self.stats = RunStats()  # live: read by the web server and MQTT threads
        window = _StatusWindow(time.monotonic())
        self._last_watchdog = float("-inf")
        self._announced_ready = False
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
                frame.image = bgr_image(frame.image)  # once here, so no stage meets a grey or BGRA frame
                resumed = window.waiting is not None
                if resumed:  # the camera is back: status lines count from now
                    window = _StatusWindow(time.monotonic())
                privacy = self.privacy_on  # once a frame: its detection and its anonymizing agree
                tracks = self._detect(frame, privacy, resumed)
                t2 = time.perf_counter()
                faces = self._classify(frame, tracks)
                t3 = time.perf_counter()
                if privacy:
                    self._anonymize(frame, faces)
                frame.anonymized = privacy
                self.annotator.draw(frame.image, faces)
                t4 = time.perf_counter()
                for sink in self.sinks:
                    sink.write(frame, faces)
                t5 = time.perf_counter()

                durations = (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)
                self._count(stats, faces, durations)
                window.add(faces, durations)
                if not self._announced_ready:
                    self._announce_ready()
                now = time.monotonic()
                self._ping_watchdog(now)
                if now - window.start >= self.status_interval_s:
                    self._report(window.line(now, stats.frames))
                    window = _StatusWindow(now)
        finally:
            stats.elapsed = time.perf_counter() - started
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

    def _detect(self, frame: Frame, privacy: bool, resumed: bool = False) -> list[Track]:
        """``resumed``: the first frame after the camera was lost, which counts as a scene cut: whoever stands
        where a face stood before the outage may be someone else, and a track only ages by frames."""
        cut = (self.cuts is not None and self.cuts.cut(frame.image)) or resumed
        if cut:
            self._end_tracks()
        plan = self.schedule.next(frame.timestamp, len(self.tracker.active_ids), privacy=privacy, cut=cut)
        self._unsure = []
        if plan == DetectionPlan.CARRY:
            return self.tracker.predict()
        regions = None
        if plan in (DetectionPlan.REGIONS, DetectionPlan.SWEEP):
            height, width = frame.image.shape[:2]
            factor = max(1.0, self.schedule.region_factor)  # no windows without tracking: nothing is carried
            regions = [box.square(factor).clipped(width, height) for box in self.tracker.carried()]
        scan = getattr(self.detector, "privacy_scan", None) if privacy else None
        if scan is not None and plan != DetectionPlan.REGIONS:
            found: FaceScan = scan(frame.image, regions if plan == DetectionPlan.SWEEP else None)
            self._unsure = found.unsure
            return self.tracker.update(found.faces, frame.image)
        if plan == DetectionPlan.REGIONS:
            return self.tracker.update(self.detector.detect(frame.image, regions), frame.image)
        # a detector without a cheap sweep scans
        return self.tracker.update(self.detector.detect(frame.image), frame.image)

    def _end_tracks(self) -> None:
        """A scene cut: the faces before it are gone, their labels and smoothing must not pass to new faces."""
        self.tracker.reset()
        self.privacy_hold.clear()
        self.smoother.forget(set())
        self._classified.clear()

    def _anonymize(self, frame: Frame, faces: list[Face]) -> None:
        """Every face that may be in the picture: the ones shown, the tracks the detector missed on its last run
        but that are still alive (a face the detector lost for a frame is still there), the unsure ones, and
        those anonymized within the hold."""
        boxes = [face.box for face in faces] + self.tracker.carried() + self._unsure
        boxes = self.privacy_hold.update(boxes, frame.timestamp)
        if boxes and self.privacy is not None:
            self.privacy(frame.image, boxes)

    def _classify(self, frame: Frame, tracks: list[Track]) -> list[Face]:
        height, width = frame.image.shape[:2]
        t = frame.timestamp
        faces = []
        for track in tracks:
            box = track.box.clipped(width, height)  # carried boxes may drift past the edge
            if box.area == 0:
                continue
            last = self._classified.get(track.track_id) if track.track_id is not None else None
            if last is not None and 0 <= t - last.t < self.classify_every_s:
                faces.append(Face(box, last.prediction, track.track_id, last.smoothed))
                continue
            turn = track.detection.turn
            if turn is not None and turn > self.max_turn:
                # a face turned away keeps what it last showed: its smoothed label, else its last prediction
                prediction = last.prediction if last is not None and last.smoothed is None else None
                smoothed = last.smoothed if last is not None else None
            else:
                prediction = self.classifier.classify(frame.image, track.detection)
                smoothed = None
                if track.track_id is not None:
                    smoothed = self.smoother.update(track.track_id, prediction, t)
            if track.track_id is not None:
                self._classified[track.track_id] = _Classified(t, prediction, smoothed)
            faces.append(Face(box, prediction, track.track_id, smoothed))
        active = self.tracker.active_ids
        self.smoother.forget(active)  # keeps the tracks that are alive but missed this frame
        for track_id in [i for i in self._classified if i not in active]:
            del self._classified[track_id]
        return faces

    @staticmethod
    def _count(stats: RunStats, faces: list[Face], durations: tuple[float, ...]) -> None:
        stats.frames += 1
        if faces:
            stats.frames_with_faces += 1
            stats.faces += len(faces)
            stats.label_counts.update(face.shown.shown_label for face in faces if face.shown is not None)
        for name, seconds in zip(STAGES, durations):
            stats.stage_seconds[name] += seconds

    def _ping_watchdog(self, now: float) -> None:
        if now - self._last_watchdog >= WATCHDOG_INTERVAL_S:
            self.notifier.watchdog()
            self._last_watchdog = now

    def _announce_ready(self) -> None:
        self.notifier.ready()
        self._announced_ready = True

    def _wait(self, waiting: SourceWaiting, window: _StatusWindow) -> _StatusWindow:
        """The source waits for its camera: the loop is alive (watchdog), and says why no frames come."""
        now = time.monotonic()
        if not self._announced_ready:
            # a camera awaited from the start: the service is up and says why it has no frames; systemd
            # would otherwise stop it when its start-up time runs out
            self._announce_ready()
        self._ping_watchdog(now)
        if window.waiting is None:  # the camera was just lost
            self._end_tracks()
            for sink in self.sinks:
                if (source_lost := getattr(sink, "source_lost", None)) is not None:
                    source_lost()
        if now - window.start >= self.status_interval_s or window.waiting is None:
            self._report(f"waiting: {waiting.reason}")
            window = _StatusWindow(now)
        window.waiting = waiting.reason
        return window

    def _report(self, line: str) -> None:
        extra = self.status_extra() if self.status_extra is not None else None
        if extra:
            line = f"{line}; {extra}"
        log.info("%s", line)
        self.notifier.status(line)

    def close(self) -> None:
        """Close every sink (finalizing recordings), then the source. Raises the first failure after trying all."""
        if self._closed:
            return
        self._closed = True
        first_error = close_all([*self.sinks, self.source])
        if first_error is not None:
            raise first_error


def close_all(parts: Sequence[Sink | Source]) -> Exception | None:
    """Close each of ``parts`` in order, whatever the others do; the first failure (each one is logged)."""
    first_error: Exception | None = None
    for part in parts:
        try:
            part.close()
        except Exception as exc:  # noqa: BLE001 - keep closing the others
            log.error("closing %s failed: %s", type(part).__name__, exc)
            first_error = first_error or exc
    return first_error


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
