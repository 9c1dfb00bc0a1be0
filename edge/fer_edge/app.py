"""The one place that builds the stages from config and runs them."""

from __future__ import annotations

import functools
import logging
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fer_edge.capture.sources import open_source, resolve_kind
from fer_edge.config import Config
from fer_edge.config.preflight import check_output_folder
from fer_edge.notify import SystemdNotifier
from fer_edge.pipeline import (
    DetectionSchedule,
    Detector,
    Pipeline,
    RunStats,
    Sink,
    Smoother,
    Source,
    Tracker,
    close_all,
)
from fer_edge.record.folderlock import FolderLock, lock_folder
from fer_edge.record.recorder import RecorderThread, start_recorder
from fer_edge.record.recovery import recover_leftovers
from fer_edge.record.retention import start_housekeeping
from fer_edge.serve.integrations import build_integrations
from fer_edge.serve.live import LiveFeed
from fer_edge.serve.switches import SwitchedPrivacy, SwitchedRecorder, Switches
from fer_edge.types import Box
from fer_edge.vision.annotate import OverlayAnnotator
from fer_edge.vision.classifier import ExpressionClassifier
from fer_edge.vision.cuts import SceneCutDetector
from fer_edge.vision.detector import REGION_FACTOR, HaarDetector
from fer_edge.vision.detector import build_detector as detector_from_config
from fer_edge.vision.privacy import anonymize
from fer_edge.vision.smoothing import LabelSmoother, NullSmoother
from fer_edge.vision.tracking import IouTracker, NullTracker

log = logging.getLogger(__name__)

LIVE_KINDS = ("picamera2", "opencv")  # sources whose frames come at the camera's pace, whether read or not
PRIVACY_WHEN_SWITCHED_ON = "blur"  # privacy.mode off, and Home Assistant switches privacy on
Privacy = Callable[[np.ndarray, list[Box]], None]


def build_classifier(cfg: Config) -> ExpressionClassifier:
    return ExpressionClassifier.from_config(cfg.model)


def build_detector(cfg: Config) -> Detector:
    return detector_from_config(cfg.detector, threads=cfg.model.threads)


def build_schedule(cfg: Config) -> DetectionSchedule:
    d = cfg.detector
    # windows around tracked faces need tracks; Haar boxes are cheap to find in windows too
    return DetectionSchedule(d.every_n_frames, d.full_scan_interval_s, REGION_FACTOR if cfg.tracking.enabled else 0)


def build_tracker(cfg: Config) -> Tracker:
    if not cfg.tracking.enabled:
        return NullTracker()
    return IouTracker.from_config(cfg.tracking)


def build_smoother(cfg: Config) -> Smoother:
    if not cfg.smoothing.enabled:
        return NullSmoother()
    if not cfg.tracking.enabled:
        log.warning("smoothing needs tracking (per-face state); showing raw predictions")
        return NullSmoother()
    return LabelSmoother.from_config(cfg.smoothing)


def build_switches(cfg: Config) -> Switches | None:
    """The runtime switches Home Assistant and the live view see; None when both are off (nothing can flip them).

    ``recording`` switches the video only (the events log goes on) and stays off when the config records no video.
    """
    if not (cfg.web.enabled or cfg.mqtt.enabled):
        return None
    unavailable = {}
    if not cfg.recording.enabled:
        unavailable["recording"] = "video recording is off in the config (recording.enabled: false)"
    return Switches(recording=cfg.recording.enabled, privacy=cfg.privacy.mode != "off", unavailable=unavailable)


def build_privacy(cfg: Config, switches: Switches | None = None) -> Privacy | None:
    """The privacy stage: the configured mode, following the ``privacy`` switch when there are switches."""
    if switches is not None:
        mode = cfg.privacy.mode if cfg.privacy.mode != "off" else PRIVACY_WHEN_SWITCHED_ON
        return SwitchedPrivacy(functools.partial(anonymize, mode=mode), switches)
    if cfg.privacy.mode == "off":
        return None
    return functools.partial(anonymize, mode=cfg.privacy.mode)


def lock_recordings(cfg: Config) -> list[FolderLock]:
    """The recordings folder locked for this run (see :func:`lock_folder`); none when nothing is recorded. A folder
    that cannot take files is refused first by ``check-config``'s own check, with its line and exit status."""
    if not (cfg.recording.enabled or cfg.events.enabled):
        return []
    check_output_folder(cfg.recording, cfg.events.enabled)
    return [lock_folder(Path(cfg.recording.output_dir))]


def abandon_all(held: list[FolderLock]) -> None:
    """Release the locks of a start that failed, leaving each folder as it was found (:meth:`FolderLock.abandon`)."""
    for lock in held:
        lock.abandon()


def build_recorder(cfg: Config, fps: float, frame_size: tuple[int, int]) -> RecorderThread | None:
    """The recording sink: MP4 segments (recording.enabled) and events.jsonl (events.enabled) written on a thread
    of their own, or None. Leftovers of an earlier run are repaired first, and the encoder is probed, here at
    start-up: switching recording on later only resumes. Behind a camera or a replay paced in real time it drops
    frames when it falls behind; behind a file read as fast as it decodes, the loop waits for it instead."""
    if not (cfg.recording.enabled or cfg.events.enabled):
        return None
    recover_leftovers(Path(cfg.recording.output_dir))  # once, before the recorder opens its first files
    live = cfg.source.realtime or resolve_kind(cfg.source) in LIVE_KINDS
    return start_recorder(cfg.recording, cfg.events, fps, frame_size, live=live)


def build_notifier(cfg: Config) -> SystemdNotifier:
    return SystemdNotifier.from_env(ping_watchdog=cfg.service.watchdog)


@dataclass(frozen=True)
class Device:
    """What runs: the loop with its source, stages and sinks, and the parts other threads reach (None when off)."""

    pipeline: Pipeline
    recorder: RecorderThread | None  # also in pipeline.sinks, behind the switches when there are switches
    feed: LiveFeed | None  # the last sink, read by the web server and the MQTT publisher
    switches: Switches | None


def build_device(cfg: Config, *, extra_sinks: Sequence[Sink] = ()) -> Device:
    """Every part from ``cfg``, wired once; model and detector first, so a bad model fails before the camera opens.

    Sinks, in order: the recorder (annotated, anonymized frames), ``extra_sinks``, the live feed, the index and
    retention thread, the folder's lock. The folder is locked before the camera opens: a second run into the same
    folder stops there, before it touches the first one's camera or files. A start that fails after that leaves
    no lock file (nor a folder made for it) behind.
    """
    classifier = build_classifier(cfg)
    detector = build_detector(cfg)
    annotator = OverlayAnnotator.from_config(cfg.overlay)
    tracker = build_tracker(cfg)
    smoother = build_smoother(cfg)
    switches = build_switches(cfg)
    privacy = build_privacy(cfg, switches)
    held = lock_recordings(cfg)
    try:
        source = open_source(cfg.source)
    except BaseException:
        abandon_all(held)
        raise
    opened: list[Sink | Source] = [source]
    if privacy is not None and isinstance(detector, HaarDetector):
        log.warning(
            "privacy with the Haar detector blurs only the frontal faces it finds, none under %d px on %dx%d frames: "
            "turned and smaller faces stay sharp (detector.kind: blazeface finds them; docs/CONFIG.md)",
            detector.smallest_face(source.size[0]),
            *source.size,
        )
    pipeline: Pipeline | None = None

    def run_stats() -> RunStats | None:
        return pipeline.stats if pipeline is not None else None

    try:
        recorder = build_recorder(cfg, source.fps, source.size)
        if recorder is not None:
            opened.append(recorder)
        integrations = build_integrations(
            cfg,
            switches,
            build_notifier(cfg),
            run_stats=run_stats,
            classifier=classifier,
            detector_name=type(detector).__name__,
            recorder=recorder,
        )
        if integrations.feed is not None:
            opened.append(integrations.feed)
        housekeeping = start_housekeeping(cfg)  # review index and retention; closed after the recorder
        opened.extend(housekeeping)
        record_sink: Sink | None = recorder
        if recorder is not None and switches is not None:
            record_sink = SwitchedRecorder(recorder, switches)
        sinks = [s for s in (record_sink, *extra_sinks, integrations.feed, *housekeeping, *held) if s is not None]
        pipeline = Pipeline(
            source,
            detector,
            classifier,
            annotator,
            sinks,
            tracker=tracker,
            smoother=smoother,
            schedule=build_schedule(cfg),
            classify_every_s=cfg.model.classify_every_s,
            max_turn=cfg.model.max_turn,
            privacy=privacy,
            privacy_hold_s=cfg.privacy.hold_s,
            cuts=SceneCutDetector(),
            notifier=integrations.notifier,
            status_interval_s=cfg.logging.status_interval_s,
            status_extra=functools.partial(status_news, source, recorder),
        )
    except BaseException:
        close_all([*opened[1:], source])  # sinks in order, then the source, then the lock
        abandon_all(held)
        raise
    return Device(pipeline, recorder, integrations.feed, switches)


def status_news(*parts: object) -> str | None:
    """What the parts that can drop frames (a camera reader, the recorder) have to say on the status line: frames
    skipped are the price of keeping up, so they stand beside the fps."""
    news = [text for part in parts if (text := getattr(part, "status", lambda: None)())]
    return "; ".join(news) or None


def build_pipeline(cfg: Config, *, extra_sinks: Sequence[Sink] = ()) -> Pipeline:
    """The loop of :func:`build_device`, for callers that need nothing else (benchmarks, tools)."""
    return build_device(cfg, extra_sinks=extra_sinks).pipeline


def run(cfg: Config, max_frames: int | None = None, *, extra_sinks: Sequence[Sink] = ()) -> RunStats:
    """Build, run until the source ends / ``max_frames`` / SIGTERM or SIGINT, and close everything."""
    pipeline = build_pipeline(cfg, extra_sinks=extra_sinks)
    previous = _install_stop_handlers(pipeline)
    try:
        return pipeline.run(max_frames)
    finally:
        try:
            pipeline.close()  # finalizes the recording, also after an error or a signal
        finally:
            _restore_handlers(previous)
            pipeline.notifier.close()


def _install_stop_handlers(pipeline: Pipeline) -> dict[int, Any]:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handle(signum: int, _frame: object) -> None:
        log.info("%s received, stopping", signal.Signals(signum).name)
        pipeline.stop()

    previous: dict[int, Any] = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, handle)
    return previous


def _restore_handlers(previous: dict[int, Any]) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
