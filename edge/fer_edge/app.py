"""The one place that builds the stages from config and runs them."""

from __future__ import annotations

import functools
import logging
import signal
import threading
from pathlib import Path

from fer_edge.annotate import Annotator
from fer_edge.classifier import ExpressionClassifier
from fer_edge.config import Config, resolve_model_path
from fer_edge.detector import HaarDetector
from fer_edge.integrations import build_integrations
from fer_edge.notify import Notifier
from fer_edge.pipeline import Pipeline, RunStats
from fer_edge.privacy import anonymize
from fer_edge.recording import Recorder
from fer_edge.smoothing import LabelSmoother
from fer_edge.sources import open_source
from fer_edge.tracking import IouTracker

log = logging.getLogger(__name__)


def build_classifier(cfg: Config) -> ExpressionClassifier:
    return ExpressionClassifier(resolve_model_path(cfg.model.path), threads=cfg.model.threads)


def build_detector(cfg: Config) -> HaarDetector:
    d = cfg.detector
    return HaarDetector(
        d.cascade,
        detect_width=d.detect_width,
        scale_factor=d.scale_factor,
        min_neighbors=d.min_neighbors,
        min_size=d.min_size,
        every_n_frames=d.every_n_frames,
    )


def build_tracker(cfg: Config) -> IouTracker | None:
    if not cfg.tracking.enabled:
        return None
    return IouTracker(cfg.tracking.iou_threshold, cfg.tracking.max_missed)


def build_smoother(cfg: Config, tracker) -> LabelSmoother | None:
    if not cfg.smoothing.enabled:
        return None
    if tracker is None:
        log.warning("smoothing needs tracking (per-face state); showing raw predictions")
        return None
    return LabelSmoother(cfg.smoothing.alpha, cfg.smoothing.hysteresis)


def build_privacy(cfg: Config):
    if cfg.privacy.mode == "off":
        return None
    r = cfg.recording
    if r.enabled and r.presence_triggered and r.pre_roll_s > 0:
        # the pre-roll is what came before the first detection: no face was found in it to anonymise
        log.warning("privacy: the %.1f s pre-roll before a face is first detected is recorded as captured; "
                    "set recording.pre_roll_s: 0 to record anonymised frames only", r.pre_roll_s)
    return functools.partial(anonymize, mode=cfg.privacy.mode)


def build_recorder(cfg: Config, fps: float, frame_size: tuple[int, int]):
    """The recording sink: MP4 segments (recording.enabled) and events.jsonl (events.enabled), or None."""
    if not (cfg.recording.enabled or cfg.events.enabled):
        return None
    r = cfg.recording
    return Recorder(
        Path(r.output_dir),
        fps,
        frame_size,
        segment_seconds=r.segment_seconds,
        fragment_seconds=r.fragment_seconds,
        codec=r.codec,
        crf=r.crf,
        min_free_mb=r.min_free_mb,
        presence_triggered=r.presence_triggered,
        pre_roll_s=r.pre_roll_s,
        post_roll_s=r.post_roll_s,
        events=cfg.events.enabled,
        record_video=r.enabled,
    )


def build_notifier(cfg: Config) -> Notifier:
    return Notifier.from_env(ping_watchdog=cfg.service.watchdog)


def build_pipeline(cfg: Config, *, extra_sinks=()) -> Pipeline:
    """Every stage from ``cfg``; model and detector first, so a bad model fails before the camera opens."""
    classifier = build_classifier(cfg)
    detector = build_detector(cfg)
    annotator = Annotator.from_config(cfg.overlay)
    tracker = build_tracker(cfg)
    smoother = build_smoother(cfg, tracker)
    privacy = build_privacy(cfg)
    source = open_source(cfg.source)
    try:
        recorder = build_recorder(cfg, source.fps, source.size)
    except BaseException:
        source.close()
        raise
    sinks = [s for s in (recorder, *extra_sinks) if s is not None]
    pipeline = Pipeline(
        source,
        detector,
        classifier,
        annotator,
        sinks,
        tracker=tracker,
        smoother=smoother,
        privacy=privacy,
        notifier=build_notifier(cfg),
        status_interval_s=cfg.logging.status_interval_s,
    )
    try:  # live view and MQTT (web, mqtt sections): a feed sink and the switches; nothing when both are off
        build_integrations(cfg, pipeline, classifier=classifier, recorder=recorder,
                           make_recorder=lambda: build_recorder(cfg, source.fps, source.size))
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
