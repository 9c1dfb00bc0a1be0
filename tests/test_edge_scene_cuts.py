"""Scene cuts on the real clips: the detector fires on the performer clip's three cuts and on no frame within a
shot, and in the loop every track ends at a cut (no id, label or smoothing crosses it) with a whole-frame scan."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from videos import decode_opencv

from fer_edge import app
from fer_edge.config import load_config
from fer_edge.pipeline import DetectionPlan, DetectionSchedule, Pipeline
from fer_edge.testing import ListSink, ListSource
from fer_edge.vision.annotate import OverlayAnnotator
from fer_edge.vision.classifier import ExpressionClassifier
from fer_edge.vision.cuts import SceneCutDetector

CLIPS = Path(__file__).resolve().parents[2] / "shared" / "clips"
PERFORMER = CLIPS / "performer-640x360.mp4"
STREET = CLIPS / "street-1080p.mp4"
PERFORMER_CUTS = [20, 82, 211]  # first frames of new shots, found by eye
# Stated false-cut rate within a shot: none in the 375 frame pairs within the two clips' shots.
MAX_FALSE_CUTS = 0


def all_frames(path: Path) -> list[np.ndarray]:
    if not path.is_file():
        pytest.skip(f"real clips not found at {CLIPS}")
    return decode_opencv(path)


@pytest.fixture(scope="module")
def performer() -> list[np.ndarray]:
    return all_frames(PERFORMER)


@pytest.fixture(scope="module")
def classifier(model_path):
    return ExpressionClassifier(model_path)


def cuts_in(frames: list[np.ndarray]) -> list[int]:
    detector = SceneCutDetector()
    return [index for index, frame in enumerate(frames) if detector.cut(frame)]


def test_cuts_are_found_where_the_shots_change_and_nowhere_else(performer):
    street = all_frames(STREET)
    assert cuts_in(performer) == PERFORMER_CUTS
    assert len(cuts_in(street)) <= MAX_FALSE_CUTS  # 104 frame pairs of people walking towards the camera


def test_a_changed_frame_size_is_a_cut(performer):
    detector = SceneCutDetector()
    assert not detector.cut(performer[0])
    assert detector.cut(cv2.resize(performer[1], (320, 180)))


def test_a_cut_makes_a_whole_frame_scan():
    schedule = DetectionSchedule(every_n_frames=3, full_scan_interval_s=1.0, region_factor=2.5)
    assert schedule.next(0.0, 0) == DetectionPlan.FULL
    assert schedule.next(0.033, 1) == DetectionPlan.CARRY
    assert schedule.next(0.067, 1, cut=True) == DetectionPlan.FULL


def run_loop(frames: list[np.ndarray], classifier) -> ListSink:
    cfg = load_config(None, {})
    sink = ListSink(keep_images=False)
    Pipeline(
        ListSource([frame.copy() for frame in frames], fps=30),
        app.build_detector(cfg),
        classifier,
        OverlayAnnotator.from_config(cfg.overlay),
        [sink],
        tracker=app.build_tracker(cfg),
        smoother=app.build_smoother(cfg),
        schedule=app.build_schedule(cfg),
        classify_every_s=cfg.model.classify_every_s,
        cuts=SceneCutDetector(),
    ).run()
    return sink


def ids(sink: ListSink, frames: range) -> set[int]:
    return {face.track_id for i in frames for face in sink.faces[i] if face.track_id is not None}


def test_no_track_spans_the_clips_cut_from_the_performer_to_the_audience(performer, classifier):
    start, cut, end = 190, 211, 240
    sink = run_loop(performer[start:end], classifier)
    before, after = ids(sink, range(0, cut - start)), ids(sink, range(cut - start, end - start))
    assert before and after
    assert not before & after
    assert sink.faces[cut - start]  # the audience's faces are found on the cut's own frame


def test_no_track_spans_a_splice_of_two_clips(performer, classifier):
    # the arcade at full scale, cropped so a walker's face (frame 60) lands where the performer's was (frame 179)
    street = [frame[549:909, 326:966].copy() for frame in all_frames(STREET)[60:90]]
    frames = performer[150:180] + street
    sink = run_loop(frames, classifier)
    before, after = ids(sink, range(0, 30)), ids(sink, range(30, 60))
    assert before and after
    assert not before & after
