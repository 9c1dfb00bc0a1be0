"""anonymize: real FER-2013 faces on a frame are no longer found by the Haar detector and lose their detail."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from fer_edge.types import Box
from fer_edge.vision.privacy import PIXELATE_BLOCKS, BlurHold, anonymize, covered_region

FRAME_W, FRAME_H = 640, 360
FACE_SIDE = 192  # a 48 px FER-2013 face upscaled 4x
FACE_AT = (224, 84)


@pytest.fixture(scope="module")
def detector():
    return cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")


def faces_in(detector, image: np.ndarray, sensitive: bool = False) -> list[Box]:
    gray = cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)
    if sensitive:  # finds every face-like pattern, including many false ones
        found = detector.detectMultiScale(gray, scaleFactor=1.05, minNeighbors=1, minSize=(30, 30))
    else:
        found = detector.detectMultiScale(gray, scaleFactor=1.1, minNeighbors=3, minSize=(40, 40))
    return [Box(*map(int, f)) for f in found]


def frame_with_face(path: Path) -> np.ndarray:
    face = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    assert face is not None, path
    big = cv2.resize(face, (FACE_SIDE, FACE_SIDE), interpolation=cv2.INTER_CUBIC)
    rng = np.random.default_rng(0)
    frame = rng.integers(60, 120, size=(FRAME_H, FRAME_W, 3), dtype=np.uint8)  # textured background
    x, y = FACE_AT
    frame[y : y + FACE_SIDE, x : x + FACE_SIDE] = big[..., None]
    return frame


@pytest.fixture(scope="module")
def scenes(detector, fer2013_dir) -> list[tuple[np.ndarray, Box]]:
    """The first three FER-2013 happy test faces (by name) that the Haar detector finds: frame and face box."""
    found = []
    for path in sorted((fer2013_dir / "test" / "happy").glob("*.jpg")):
        frame = frame_with_face(path)
        boxes = [b for b in faces_in(detector, frame) if b.iou(Box(*FACE_AT, FACE_SIDE, FACE_SIDE)) > 0.5]
        if boxes:
            found.append((frame, boxes[0]))
        if len(found) == 3:
            return found
    pytest.fail("the Haar detector found fewer than 3 FER-2013 happy faces")


def pixels(image: np.ndarray, box: Box) -> np.ndarray:
    return image[box.y : box.y2, box.x : box.x2]


def gray_region(image: np.ndarray, box: Box) -> np.ndarray:
    return cv2.cvtColor(pixels(image, box), cv2.COLOR_BGR2GRAY).astype(np.float64)


def laplacian_energy(image: np.ndarray, box: Box) -> float:
    return float(cv2.Laplacian(gray_region(image, box), cv2.CV_64F).var())


def assert_only_region_changed(before: np.ndarray, after: np.ndarray, region: Box) -> None:
    outside = np.ones(before.shape[:2], dtype=bool)
    outside[region.y : region.y2, region.x : region.x2] = False
    assert np.array_equal(before[outside], after[outside])


@pytest.mark.parametrize("mode", ["blur", "pixelate"])
def test_face_is_no_longer_detected_and_outside_is_untouched(detector, scenes, mode):
    for frame, box in scenes:
        image = frame.copy()
        anonymize(image, [box], mode)
        region = covered_region(box, FRAME_W, FRAME_H)
        assert region.w > box.w and region.h > box.h  # enlarged beyond the detector's box
        assert_only_region_changed(frame, image, region)
        assert not np.array_equal(pixels(frame, region), pixels(image, region))
        for sensitive in (False, True):
            left = [b for b in faces_in(detector, image, sensitive) if b.iou(box) > 0.2]
            assert left == [], f"{mode}: face still detected at {left} (sensitive={sensitive})"


def face_part(box: Box) -> Box:
    """The part of the detector's box on the face image (not on the noisy background)."""
    x, y = max(box.x, FACE_AT[0]), max(box.y, FACE_AT[1])
    return Box(x, y, min(box.x2, FACE_AT[0] + FACE_SIDE) - x, min(box.y2, FACE_AT[1] + FACE_SIDE) - y)


def test_blur_removes_the_fine_detail(scenes):
    for frame, box in scenes:
        image = frame.copy()
        anonymize(image, [box], "blur")
        face = face_part(box)
        assert laplacian_energy(frame, face) > 8 * laplacian_energy(image, face)  # 11x, 38x, 27x here
        assert gray_region(frame, face).var() > 2 * gray_region(image, face).var()


def test_pixelate_leaves_a_few_flat_blocks(scenes):
    for frame, box in scenes:
        image = frame.copy()
        anonymize(image, [box], "pixelate")
        region = covered_region(box, FRAME_W, FRAME_H)
        before, after = gray_region(frame, region), gray_region(image, region)
        assert len(np.unique(before)) > 100
        assert len(np.unique(after)) <= PIXELATE_BLOCKS**2
        # Pixels are constant within each block: almost all neighbours are equal.
        assert np.mean(np.diff(after, axis=1) == 0) > 0.95 and np.mean(np.diff(after, axis=0) == 0) > 0.95
        assert before.var() > 1.5 * after.var()


def test_box_at_the_frame_edge_is_clipped(scenes):
    frame, _ = scenes[0]
    image = frame.copy()
    box = Box(-40, FRAME_H - 100, 150, 150)  # sticks out left and bottom
    anonymize(image, [box], "pixelate")
    region = covered_region(box, FRAME_W, FRAME_H)
    assert (region.x, region.y2) == (0, FRAME_H)
    assert_only_region_changed(frame, image, region)


def test_several_faces_and_off_mode(scenes):
    frame, box = scenes[0]
    other = Box(500, 40, 80, 80)
    image = frame.copy()
    anonymize(image, [box, other], "off")
    assert np.array_equal(image, frame)
    anonymize(image, [], "blur")
    assert np.array_equal(image, frame)
    anonymize(image, [box, other], "blur")
    for b in (box, other):
        region = covered_region(b, FRAME_W, FRAME_H)
        assert not np.array_equal(pixels(image, region), pixels(frame, region))


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match="privacy mode"):
        anonymize(np.zeros((10, 10, 3), np.uint8), [], "smudge")


def test_overlapping_faces_leave_no_sharp_edge_across_a_face(scenes):
    # in a crowd a large unsure box (a torso, a group) often overlaps a face; blurred one after the other, the edge
    # of the coarsely blurred large region would run as a sharp step across the face
    for frame, box in scenes:
        other = Box(box.x - box.w // 2, box.y + box.h * 3 // 4, box.w * 2, box.h)
        middle = face_part(box).square(0.6)  # eyes, nose and mouth
        for order in ([box, other], [other, box]):
            image = frame.copy()
            anonymize(image, order, "blur")
            assert laplacian_energy(frame, middle) > 8 * laplacian_energy(image, middle)


def test_the_hold_covers_a_lost_face_where_it_was_and_leaves_no_trail_behind_a_found_one():
    hold = BlurHold(0.25)
    still, walking = Box(100, 100, 50, 50), Box(300, 100, 50, 50)
    assert hold.update([still, walking], 0.0) == [still, walking]
    moved = Box(310, 100, 50, 50)  # the walker found again, a little further on: its old box goes
    assert hold.update([moved], 0.04) == [still, moved]  # the still face was lost: held where it was
    assert hold.update([], 0.2) == [still, moved]
    assert hold.update([], 0.26) == [moved]  # 0.26 s after the still face was last found
    assert hold.update([], 0.3) == []
    hold.update([still], 1.0)
    hold.clear()  # a scene cut
    assert hold.update([], 1.01) == []
    assert BlurHold(0.0).update([], 1.0) == [] and BlurHold(0.0).update([still], 1.0) == [still]
