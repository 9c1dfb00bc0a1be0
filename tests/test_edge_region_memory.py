"""A camera on a wall looks at a still room most of the day: a scan region whose picture has not changed since its
runs began keeps every face they found, a face coming in is still found and blurred on its first frame, and a dim
face that the detector finds in some frames' noise only is blurred as it is without the memory. Real footage: one
frame of the performer clip held still, with a camera's sensor noise on every frame."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from test_edge_privacy_flow import (
    KEPT_DETAIL,
    PERFORMER,
    kept_detail,
    paste_box,
    pipeline_for,
    read_frames,
    walker_crop,
    with_walker,
)

from fer_edge import app
from fer_edge.config import load_config
from fer_edge.testing import ListSink, count_face_model_runs
from fer_edge.types import Box
from fer_edge.vision.classifier import ExpressionClassifier
from fer_edge.vision.detector import EDGE_MODELS, SETTLE_SCANS, BlazeFaceDetector

SENSOR_NOISE = 2.0  # grey levels, standard deviation per pixel


@pytest.fixture(scope="module")
def still_room() -> list[np.ndarray]:
    """Performer frame 100 held for 24 frames."""
    if not PERFORMER.is_file():
        pytest.skip("real clips not found")
    return read_frames(PERFORMER, 100, 1) * 24


@pytest.fixture(scope="module")
def walker(still_room) -> np.ndarray:
    return walker_crop()


def camera(frames: list[np.ndarray], scale: int = 1) -> list[np.ndarray]:
    """``frames`` scaled up ``scale`` times, each with its own sensor noise."""
    rng = np.random.default_rng(0)
    out = []
    for frame in frames:
        if scale > 1:
            frame = cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        out.append(np.clip(frame + rng.normal(0, SENSOR_NOISE, frame.shape), 0, 255).astype(np.uint8))
    return out


def scanned(detector: BlazeFaceDetector, frames: list[np.ndarray]) -> tuple[list[list], list[int]]:
    """The faces of each frame's privacy scan, and how many times the face models ran for each."""
    runs = count_face_model_runs(detector)
    found = []
    for frame in frames:
        found.append(detector.privacy_scan(frame).faces)
        runs.append(0)
    return found, runs[:-1]


def test_a_still_room_is_not_scanned_again_until_something_in_it_changes(still_room, walker):
    detector = BlazeFaceDetector(min_face=40, rescan_change=4.0)
    frames = camera(with_walker(still_room, walker, start=12), scale=2)  # 1280x720: tiles, then the whole frame
    pasted = paste_box()
    pasted = Box(2 * pasted.x, 2 * pasted.y, 2 * pasted.w, 2 * pasted.h)
    found, runs = scanned(detector, frames)
    plan = detector.plan(frames[0].shape[1], frames[0].shape[0])
    whole = sum(len(level.regions) for level in plan) + len(EDGE_MODELS)  # and the frame mirrored past its edges

    # every region runs until it has been still for SETTLE_SCANS, then the noise alone changes nothing
    assert runs[:SETTLE_SCANS] == [whole] * SETTLE_SCANS and runs[SETTLE_SCANS:12] == [0] * (12 - SETTLE_SCANS), runs
    settled = found[SETTLE_SCANS - 1]
    assert settled and all(faces == settled for faces in found[SETTLE_SCANS:12])  # the performer, kept
    # the walker: the regions it stands in run again until they have settled, the others keep their faces
    touched = runs[12]
    assert 0 < touched < whole and all(touched <= n <= touched + 1 for n in runs[13 : 12 + SETTLE_SCANS]), runs
    assert any(face.box.iou(pasted) > 0.2 for face in found[12])
    no_memory = BlazeFaceDetector(min_face=40).privacy_scan(frames[12]).faces
    assert len(found[12]) == len(no_memory) and all(max(f.box.iou(g.box) for g in no_memory) > 0.9 for f in found[12])


def test_a_slow_change_adds_up_until_the_region_runs_again(still_room):
    detector = BlazeFaceDetector(min_face=40, rescan_change=4.0)
    base = camera(still_room[:1])[0].astype(np.int16)
    steps = [0] * SETTLE_SCANS + [1, 2, 3, 4, 5]  # settled, then one grey level brighter a frame
    _, runs = scanned(detector, [np.clip(base + step, 0, 255).astype(np.uint8) for step in steps])
    whole = runs[0]
    assert max(runs[SETTLE_SCANS : SETTLE_SCANS + 4]) <= 1, runs  # 1-4 levels: at most the one region a scan
    assert runs[SETTLE_SCANS + 4] == whole, runs  # 5 levels from when the regions settled: all again


def test_still_regions_run_again_one_a_scan_the_longest_waiting_first(still_room):
    detector = BlazeFaceDetector(min_face=40, rescan_change=4.0)
    frames = camera(still_room[:1], scale=2)
    width, height = frames[0].shape[1], frames[0].shape[0]
    whole = sum(len(level.regions) for level in detector.plan(width, height))
    _, runs = scanned(detector, frames * (SETTLE_SCANS + 3 * whole))
    refreshes = runs[SETTLE_SCANS:]
    assert max(refreshes) == 1, runs  # never a whole scan's stall
    # once the regions have waited a round, one runs again on every scan: each every `whole` scans
    assert refreshes[whole:] == [1] * (2 * whole), runs


def test_a_dim_face_in_a_still_room_is_blurred_as_without_the_memory(still_room, walker, model_path):
    """A face in shade, which the detector finds in some frames' noise and misses in others': the memory keeps
    every face its region's runs found while nothing moved, so one unlucky miss is not what a still room keeps."""
    shade = 0.07  # of the walker's brightness: found on about 60% of frames at the privacy score
    dim = still_room[0].astype(np.float32)
    box = paste_box()
    dim[box.y : box.y2, box.x : box.x2] = walker.astype(np.float32) * shade
    frames = camera([np.clip(dim, 0, 255).astype(np.uint8)] * 30)
    sharp = {}
    for change in (0.0, 4.0):
        cfg = load_config(None, {"privacy.mode": "blur", "detector.rescan_change": change})
        sink = ListSink()
        pipeline_for(cfg, frames, ExpressionClassifier(model_path), [sink], app.build_privacy(cfg)).run()
        sharp[change] = [i for i in range(len(frames)) if kept_detail(sink.frames[i].image, frames[i]) > KEPT_DETAIL]
    assert len(sharp[0.0]) < 5, sharp  # the hold and the tracker cover the misses without the memory
    assert len(sharp[4.0]) <= len(sharp[0.0]), sharp


def test_no_memory_runs_every_region_on_every_scan(still_room):
    detector = app.build_detector(load_config(None, {"detector.rescan_change": 0}))
    assert isinstance(detector, BlazeFaceDetector)
    _, runs = scanned(detector, camera(still_room[:3]))
    assert runs[0] > 0 and runs == [runs[0]] * 3


def test_a_face_walking_into_a_still_room_is_blurred_from_its_first_frame(still_room, walker, model_path):
    cfg = load_config(None, {"privacy.mode": "blur"})
    assert cfg.detector.rescan_change > 0  # memory is on by default
    captured = camera(with_walker(still_room, walker, start=10))
    sink = ListSink()
    pipeline_for(cfg, captured, ExpressionClassifier(model_path), [sink], app.build_privacy(cfg)).run()

    kept = [kept_detail(sink.frames[i].image, captured[i]) for i in range(10, len(captured))]
    assert max(kept) < KEPT_DETAIL, [round(k, 2) for k in kept]
    assert all(any(face.box.iou(paste_box()) > 0.2 for face in faces) for faces in sink.faces[10:])
