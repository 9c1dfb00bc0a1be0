"""The one place that builds the stages from config and runs them."""

from __future__ import annotations

import functools
import logging
import signal
import threading
from pathlib import Path

from fer_edge.capture.sources import open_source
from fer_edge.config import Config
from fer_edge.notify import SystemdNotifier
from fer_edge.pipeline import DetectionSchedule, Pipeline, RunStats, Smoother, Tracker
from fer_edge.record.recorder import open_recorder
from fer_edge.record.recovery import recover_leftovers
from fer_edge.record.retention import start_housekeeping
from fer_edge.serve.integrations import build_integrations
from fer_edge.vision.annotate import OverlayAnnotator
from fer_edge.vision.classifier import ExpressionClassifier
from fer_edge.vision.cuts import SceneCutDetector
from fer_edge.vision.detector import REGION_FACTOR
from fer_edge.vision.detector import build_detector as detector_from_config
from fer_edge.vision.privacy import anonymize
from fer_edge.vision.smoothing import LabelSmoother, NullSmoother
from fer_edge.vision.tracking import IouTracker, NullTracker

log = logging.getLogger(__name__)


def build_classifier(cfg: Config) -> ExpressionClassifier:
    return ExpressionClassifier.from_config(cfg.model)


def build_detector(cfg: Config):
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


def build_privacy(cfg: Config):
    if cfg.privacy.mode == "off":
        return None
    return functools.partial(anonymize, mode=cfg.privacy.mode)


def build_recorder(cfg: Config, fps: float, frame_size: tuple[int, int]):
    """The recording sink: MP4 segments (recording.enabled) and events.jsonl (events.enabled), or None."""
    if not (cfg.recording.enabled or cfg.events.enabled):
        return None
    recover_leftovers(Path(cfg.recording.output_dir))  # once, before the recorder opens its first files
    return open_recorder(cfg.recording, cfg.events, fps, frame_size)


def build_notifier(cfg: Config) -> SystemdNotifier:
    return SystemdNotifier.from_env(ping_watchdog=cfg.service.watchdog)


def build_pipeline(cfg: Config, *, extra_sinks=()) -> Pipeline:
    """Every stage from ``cfg``; model and detector first, so a bad model fails before the camera opens."""
    classifier = build_classifier(cfg)
    detector = build_detector(cfg)
    annotator = OverlayAnnotator.from_config(cfg.overlay)
    tracker = build_tracker(cfg)
    smoother = build_smoother(cfg)
    privacy = build_privacy(cfg)
    source = open_source(cfg.source)
    try:
        recorder = build_recorder(cfg, source.fps, source.size)
    except BaseException:
        source.close()
        raise
    sinks = [s for s in (recorder, *extra_sinks) if s is not None]
    sinks += start_housekeeping(cfg)  # review index and retention; closed after the recorder
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
        cuts=SceneCutDetector(),
        notifier=build_notifier(cfg),
        status_interval_s=cfg.logging.status_interval_s,
    )
    try:  # live view and MQTT (web, mqtt sections): a feed sink and the switches; nothing when both are off
        build_integrations(
            cfg,
            pipeline,
            classifier=classifier,
            recorder=recorder,
            make_recorder=lambda: build_recorder(cfg, source.fps, source.size),
        )
    except BaseException:
        pipeline.close()
        raise
    return pipeline


def run(cfg: Config, max_frames: int | None = None, *, extra_sinks=()) -> RunStats:
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


def _install_stop_handlers(pipeline: Pipeline) -> dict:
    if threading.current_thread() is not threading.main_thread():
        return {}

    def handle(signum, _frame):
        log.info("%s received, stopping", signal.Signals(signum).name)
        pipeline.stop()

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous[signum] = signal.signal(signum, handle)
    return previous


def _restore_handlers(previous: dict) -> None:
    for signum, handler in previous.items():
        signal.signal(signum, handler)
