"""What privacy's every-frame coverage costs and what it covers, on real footage: between whole-frame scans a
cheap sweep looks at the whole frame, and faces too unsure to track (one half out of the frame) are blurred but
neither tracked nor classified."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_edge_privacy_flow import KEPT_DETAIL, PERFORMER, laplacian_energy, pipeline_for, read_frames

from fer_edge import app
from fer_edge.config import load_config
from fer_edge.testing import ListSink, count_face_model_runs
from fer_edge.types import Box
from fer_edge.vision.classifier import ExpressionClassifier
from fer_edge.vision.detector import EDGE_MODELS, BlazeFaceDetector
from fer_edge.vision.schedule import DetectionPlan, DetectionSchedule, FaceScan

SIDE = 130  # the walker's crop, its face about 70 px
MOSTLY_OUT = 58  # px of the crop beyond the right edge: BlazeFace scores what is left of the face 0.3-0.45


@pytest.fixture(scope="module")
def classifier(model_path):
    return ExpressionClassifier(model_path)


@pytest.fixture(scope="module")
def frames() -> list[np.ndarray]:
    if not PERFORMER.is_file():
        pytest.skip("real clips not found")
    return read_frames(PERFORMER, 100, 40)


@pytest.fixture(scope="module")
def crop() -> np.ndarray:
    frame = read_frames(PERFORMER, 150, 1)[0]
    face = max(BlazeFaceDetector(min_face=40).detect(frame), key=lambda d: d.box.area).box
    box = face.square(1.8).clipped(frame.shape[1], frame.shape[0])
    return cv2.resize(frame[box.y : box.y2, box.x : box.x2], (SIDE, SIDE), interpolation=cv2.INTER_AREA)


def at_right_edge(frames: list[np.ndarray], crop: np.ndarray, shift: int) -> tuple[list[np.ndarray], Box]:
    """``frames`` with the walker ``shift`` px of its crop beyond the frame's right edge, and the middle of what
    is left of its face."""
    out = []
    x0 = frames[0].shape[1] - SIDE + shift
    for frame in frames:
        image = frame.copy()
        image[150 : 150 + SIDE, x0:] = crop[:, : image.shape[1] - x0]
        out.append(image)
    return out, Box(x0 + 40, 150 + 40, SIDE - shift - 40, 50)


def kept(sink: ListSink, captured: list[np.ndarray], box: Box) -> list[float]:
    return [laplacian_energy(out.image, box) / laplacian_energy(inp, box) for out, inp in zip(sink.frames, captured)]


def test_a_face_half_out_of_the_frame_is_blurred_but_neither_tracked_nor_classified(frames, crop, classifier):
    captured, visible = at_right_edge(frames, crop, MOSTLY_OUT)
    cfg = load_config(None, {"privacy.mode": "blur", "overlay.enabled": False, "detector.privacy_min_score": 0.2})
    detector = app.build_detector(cfg)
    assert isinstance(detector, BlazeFaceDetector)
    assert not [d for d in detector.detect(captured[0]) if d.box.iou(visible) > 0]  # below the model's threshold
    assert [box for box in detector.privacy_scan(captured[0]).unsure if box.iou(visible) > 0]
    sink = ListSink()
    pipeline_for(cfg, captured, classifier, [sink], app.build_privacy(cfg)).run()

    assert max(kept(sink, captured, visible)) < KEPT_DETAIL, [round(k, 2) for k in kept(sink, captured, visible)]
    assert not [face for faces in sink.faces for face in faces if face.box.iou(visible) > 0]  # no label, no event
    assert all(len(faces) == 1 for faces in sink.faces)  # the performer beside it is


def test_a_face_the_detector_loses_for_a_few_frames_stays_blurred_within_the_hold(frames, crop, classifier):
    captured, visible = at_right_edge(frames[:12], crop, MOSTLY_OUT)
    lost = {5, 6, 7}  # frames (0.1 s at 30 fps) on which the face's score dips below privacy_min_score
    kept_by_hold = {}
    for hold in (0.0, 0.25):
        settings = {"privacy.mode": "blur", "overlay.enabled": False, "detector.privacy_min_score": 0.2}
        cfg = load_config(None, {**settings, "privacy.hold_s": hold})
        sink = ListSink()
        pipeline = pipeline_for(cfg, captured, classifier, [sink], app.build_privacy(cfg))
        detector = pipeline.detector
        assert isinstance(detector, BlazeFaceDetector)
        scan, calls = detector.privacy_scan, []

        def wavering(image: np.ndarray, regions: list[Box] | None = None, scan=scan, calls=calls) -> FaceScan:
            found = scan(image, regions)
            calls.append(len(calls))
            if calls[-1] in lost:
                return FaceScan(found.faces, [box for box in found.unsure if box.iou(visible) == 0])
            return found

        detector.privacy_scan = wavering  # type: ignore[method-assign]
        pipeline.run()
        assert len(calls) == len(captured)  # one whole-frame scan a frame
        kept_by_hold[hold] = kept(sink, captured, visible)
    assert min(kept_by_hold[0.0][i] for i in lost) > KEPT_DETAIL  # without a hold the lost frames are sharp
    assert max(kept_by_hold[0.25]) < KEPT_DETAIL, [round(k, 2) for k in kept_by_hold[0.25]]


def test_privacy_sweeps_the_frame_between_whole_frame_scans(frames, classifier):
    frames = [cv2.resize(frame, (1280, 720), interpolation=cv2.INTER_CUBIC) for frame in frames]
    cfg = load_config(None, {"privacy.mode": "blur", "detector.sweep_tiles": 1})
    detector = app.build_detector(cfg)
    assert isinstance(detector, BlazeFaceDetector)
    inferences = count_face_model_runs(detector)

    class Counting(ListSink):
        def write(self, frame, faces):
            super().write(frame, faces)
            inferences.append(0)

    sink = Counting(keep_images=False)
    pipeline = pipeline_for(cfg, frames, classifier, [sink], app.build_privacy(cfg))
    pipeline.detector = detector
    pipeline.run()

    # the plan's regions and the frame mirrored past its edges
    whole = sum(len(level.regions) for level in detector.plan(1280, 720)) + len(EDGE_MODELS)
    per_frame = inferences[: len(frames)]
    assert per_frame[0] == whole  # the first frame is scanned whole
    # one more whole-frame scan a second later (40 frames at 30 fps); between them a sweep of half the cost or less
    sweeps = [n for n in per_frame if n < whole]
    assert len(sweeps) == len(per_frame) - 2 and max(sweeps) <= whole // 2, per_frame
    assert all(sink.faces)  # and the performer is found on every frame


def test_privacy_scans_whole_on_switch_on_at_cuts_and_each_interval_and_sweeps_between():
    schedule = DetectionSchedule(every_n_frames=3, full_scan_interval_s=1.0, region_factor=2.5)
    assert schedule.next(0.0, 0) == DetectionPlan.FULL
    assert schedule.next(0.25, 1) == DetectionPlan.CARRY
    plans = [schedule.next(0.25 * i, 1, privacy=True) for i in range(2, 8)]
    # privacy just came on, a sweep on each frame until a second after that scan
    assert plans == [DetectionPlan.FULL, *[DetectionPlan.SWEEP] * 3, DetectionPlan.FULL, DetectionPlan.SWEEP]
    assert schedule.next(2.0, 1, privacy=True, cut=True) == DetectionPlan.FULL
    assert schedule.next(2.25, 1, privacy=True) == DetectionPlan.SWEEP
    assert schedule.next(2.5, 1) == DetectionPlan.CARRY  # privacy off: the sparse schedule again
