"""Haar face detection: real FER-2013 faces on a larger canvas, the demo clip, cascade lookup."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest

import fer_edge.vision.detector as detector_module
from fer_edge.errors import DetectorError
from fer_edge.types import Box
from fer_edge.vision.detector import CASCADE_FILENAME, HaarDetector, cascade_candidates, find_cascade


@pytest.fixture(scope="module")
def detector():
    return HaarDetector()


def boxes_of(detections) -> list[Box]:
    assert all(d.keypoints == () and d.score == 1.0 for d in detections)  # Haar gives boxes only
    return [d.box for d in detections]


def face_on_canvas(path, side: int, at: tuple[int, int], size=(640, 480)) -> tuple[np.ndarray, Box]:
    face = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    canvas = np.full((size[1], size[0]), 128, np.uint8)
    x, y = at
    canvas[y : y + side, x : x + side] = cv2.resize(face, (side, side), interpolation=cv2.INTER_CUBIC)
    return cv2.cvtColor(canvas, cv2.COLOR_GRAY2BGR), Box(x, y, side, side)


def test_finds_fer_faces_placed_on_a_larger_canvas(detector, public_faces):
    faces = public_faces(40)
    found = 0
    for i, (path, _) in enumerate(faces):
        image, truth = face_on_canvas(path, side=150 + i, at=(60 + 9 * i, 40 + 5 * i))
        boxes = boxes_of(detector.detect(image))
        found += any(box.iou(truth) > 0.4 for box in boxes)
        for box in boxes:  # full-frame coordinates, inside the frame
            assert 0 <= box.x and box.x2 <= 640 and 0 <= box.y and box.y2 <= 480
    assert found >= 0.7 * len(faces), f"{found}/{len(faces)} faces found"


def test_blank_frame_has_no_faces(detector):
    assert detector.detect(np.full((480, 640, 3), 128, np.uint8)) == []


def test_boxes_are_in_full_frame_coordinates_at_any_frame_size(detector, public_faces):
    # Detection runs at detect_width whatever the frame size, so a frame twice as large gives boxes twice as large.
    compared = 0
    for path, _ in public_faces(8, seed=5):
        small, truth = face_on_canvas(path, side=140, at=(200, 120))
        large = cv2.resize(small, (1280, 960), interpolation=cv2.INTER_LINEAR)
        boxes_small = boxes_of(detector.detect(small))
        boxes_large = boxes_of(detector.detect(large))
        if not any(b.iou(truth) > 0.4 for b in boxes_small):
            continue
        compared += 1
        assert len(boxes_large) == len(boxes_small)
        for b_small, b_large in zip(sorted(boxes_small, key=Box.as_list), sorted(boxes_large, key=Box.as_list)):
            assert b_large.iou(b_small.scaled(2.0)) > 0.8
    assert compared >= 3


def test_finds_the_faces_of_the_demo_clip(detector, demo_clip):
    truth = {f["frame"]: Box(*f["box"]) for f in json.loads(demo_clip.with_suffix(".json").read_text())["faces"]}
    capture = cv2.VideoCapture(str(demo_clip))
    hits = with_face = false_boxes = 0
    index = 0
    while True:
        ok, image = capture.read()
        if not ok:
            break
        if index % 4 == 0:
            boxes = boxes_of(detector.detect(image))
            if index in truth:
                with_face += 1
                hits += any(box.iou(truth[index]) > 0.4 for box in boxes)
            else:
                false_boxes += len(boxes)
        index += 1
    capture.release()
    assert with_face > 50
    assert hits >= 0.9 * with_face
    assert false_boxes <= 2


def test_a_region_search_finds_the_face_of_the_whole_frame_search(detector, public_faces):
    compared = 0
    for path, _ in public_faces(8, seed=3):
        image, truth = face_on_canvas(path, side=150, at=(300, 150))
        whole = boxes_of(detector.detect(image))
        if not any(box.iou(truth) > 0.4 for box in whole):
            continue
        compared += 1
        around = boxes_of(detector.detect(image, [truth.square(2.5).clipped(640, 480)]))
        elsewhere = detector.detect(image, [Box(0, 0, 200, 200)])
        assert any(a.iou(w) > 0.8 for a in around for w in whole if w.iou(truth) > 0.4)
        assert elsewhere == []
    assert compared >= 3


def test_cascade_search_order(monkeypatch, tmp_path):
    assert cascade_candidates(str(tmp_path / "mine.xml")) == [tmp_path / "mine.xml"]
    default = cascade_candidates(None)
    assert [str(p.parent) for p in default[1:]] == ["/usr/share/opencv4/haarcascades", "/usr/share/opencv/haarcascades"]
    assert default[0].parent == detector_module.Path(cv2.data.haarcascades)
    assert all(p.name == CASCADE_FILENAME for p in default)
    monkeypatch.delattr(cv2, "data")  # Pi OS python3-opencv has no cv2.data
    assert [str(p) for p in cascade_candidates(None)] == [
        "/usr/share/opencv4/haarcascades/haarcascade_frontalface_default.xml",
        "/usr/share/opencv/haarcascades/haarcascade_frontalface_default.xml",
    ]


def test_missing_cascade_error_lists_the_paths_tried(monkeypatch, tmp_path):
    monkeypatch.delattr(cv2, "data")
    monkeypatch.setattr(detector_module, "SYSTEM_CASCADE_DIRS", (str(tmp_path / "a"), str(tmp_path / "b")))
    with pytest.raises(DetectorError) as caught:
        find_cascade(None)
    message = str(caught.value)
    assert str(tmp_path / "a" / CASCADE_FILENAME) in message and str(tmp_path / "b" / CASCADE_FILENAME) in message
    with pytest.raises(DetectorError, match="mine.xml"):
        HaarDetector(tmp_path / "mine.xml")


def test_a_file_that_is_not_a_cascade_is_rejected(tmp_path):
    bogus = tmp_path / "bogus.xml"
    bogus.write_text("<opencv_storage></opencv_storage>\n")
    with pytest.raises(DetectorError, match="could not be loaded"):
        HaarDetector(bogus)


def demo_face_crop(demo_clip) -> np.ndarray:
    """The demo clip's face at frame 40 with the margin around it that Haar needs."""
    truth = next(f for f in json.loads(demo_clip.with_suffix(".json").read_text())["faces"] if f["frame"] == 40)
    capture = cv2.VideoCapture(str(demo_clip))
    capture.set(cv2.CAP_PROP_POS_FRAMES, 40)
    ok, frame = capture.read()
    capture.release()
    assert ok
    around = Box(*truth["box"]).square(1.6)
    return frame[around.y : around.y2, around.x : around.x2]


def test_the_smallest_face_haar_finds_grows_with_the_frame_width(detector, demo_clip):
    crop = demo_face_crop(demo_clip)
    smallest = detector.smallest_face(1920)
    assert smallest == 144 and detector.smallest_face(640) == 48  # 24 px windows at 320 px wide
    found = {}
    for side in (round(0.7 * smallest), round(1.7 * smallest)):
        frame = np.full((1080, 1920, 3), 90, np.uint8)
        patch = cv2.resize(crop, (round(side * 1.6),) * 2, interpolation=cv2.INTER_AREA)
        frame[300 : 300 + patch.shape[0], 800 : 800 + patch.shape[1]] = patch
        found[side] = len(detector.detect(frame)), len(HaarDetector(detect_width=1920).detect(frame))
    assert found == {round(0.7 * smallest): (0, 1), round(1.7 * smallest): (1, 1)}


def test_privacy_with_haar_says_which_faces_it_cannot_cover(demo_clip, model_path, tmp_path, caplog):
    from fer_edge.cli import main

    config = tmp_path / "haar.yaml"
    config.write_text("detector:\n  kind: haar\nprivacy:\n  mode: blur\n")
    run = ["run", "--config", str(config), "--source", str(demo_clip), "--model", str(model_path)]
    with caplog.at_level("WARNING", logger="fer_edge.app"):
        assert main([*run, "--no-record", "--max-frames", "1"]) == 0
    assert "frontal faces it finds, none under 48 px on 640x360 frames" in caplog.text
