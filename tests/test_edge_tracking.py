"""IouTracker: stable ids for moving faces, new ids for new faces, track end, crossings, extrapolation."""

from __future__ import annotations

import numpy as np

from fer_edge.types import Box, Detection
from fer_edge.vision.tracking import IouTracker, NullTracker


class BoxTracker:
    """The tracker seen through boxes: detections without keypoints in, ``(id, box)`` out."""

    def __init__(self, **settings):
        self.inner = IouTracker(**settings)

    @property
    def active_ids(self) -> set[int]:
        return self.inner.active_ids

    def update(self, boxes: list[Box]) -> list[tuple[int, Box]]:
        tracks = self.inner.update([Detection(box) for box in boxes])
        assert all(track.detected for track in tracks)
        return [(track.track_id, track.box) for track in tracks]

    def predict(self) -> list[tuple[int, Box]]:
        tracks = self.inner.predict()
        assert not any(track.detected for track in tracks)
        return [(track.track_id, track.box) for track in tracks]

    def carried(self) -> list[Box]:
        return self.inner.carried()


def ids(assigned: list[tuple[int, Box]]) -> list[int]:
    return [track_id for track_id, _ in assigned]


def test_moving_face_keeps_its_id():
    tracker = BoxTracker()
    seen = set()
    for frame in range(60):
        box = Box(50 + 4 * frame, 80 + frame, 120, 120)
        assigned = tracker.update([box])
        assert assigned == [(assigned[0][0], box)]  # the detection itself comes back, with an id
        seen.update(ids(assigned))
    assert seen == {1}
    assert tracker.active_ids == {1}


def test_second_face_appearing_gets_a_new_id_and_both_stay():
    tracker = BoxTracker()
    for frame in range(5):
        assert ids(tracker.update([Box(40 + frame, 60, 100, 100)])) == [1]
    for frame in range(5, 20):
        # Detector order is arbitrary: the new face comes first in the list.
        assigned = tracker.update([Box(400 - frame, 70, 90, 90), Box(40 + frame, 60, 100, 100)])
        assert ids(assigned) == [2, 1]
    assert tracker.active_ids == {1, 2}


def test_track_ends_after_max_missed_updates_and_a_returning_face_is_new():
    tracker = BoxTracker(max_missed=3)
    box = Box(100, 100, 80, 80)
    tracker.update([box])
    for _ in range(3):
        assert tracker.update([]) == []
        assert tracker.active_ids == {1}  # still alive through max_missed misses
    assert ids(tracker.update([box])) == [1]  # ...and picked up again

    for _ in range(4):
        tracker.update([])
    assert tracker.active_ids == set()
    assert ids(tracker.update([box])) == [2]


def test_predict_does_not_count_as_a_miss():
    tracker = BoxTracker(max_missed=2)
    tracker.update([Box(100, 100, 80, 80)])
    for _ in range(20):
        assert ids(tracker.predict()) == [1]
    assert tracker.active_ids == {1}
    # A detection far along the same spot is still the same face.
    assert ids(tracker.update([Box(102, 101, 80, 80)])) == [1]


def test_predict_extrapolates_at_constant_velocity_per_frame():
    tracker = BoxTracker()
    tracker.update([Box(100, 50, 80, 80)])
    tracker.update([Box(110, 56, 80, 84)])  # +10, +6 per frame
    assert tracker.predict() == [(1, Box(120, 62, 80, 84))]
    assert tracker.predict() == [(1, Box(130, 68, 80, 84))]
    # Detection every third frame: velocity is per frame, not per detection.
    tracker.update([Box(140, 74, 80, 84)])
    tracker.predict()
    tracker.predict()
    tracker.update([Box(170, 92, 80, 84)])
    assert tracker.predict() == [(1, Box(180, 98, 80, 84))]


def test_carried_shows_missed_tracks_where_they_should_be_now():
    tracker = BoxTracker()
    tracker.update([Box(100, 50, 80, 80), Box(400, 50, 80, 80)])
    tracker.update([Box(110, 50, 80, 80), Box(400, 50, 80, 80)])
    assert tracker.update([Box(400, 52, 80, 80)]) == [(2, Box(400, 52, 80, 80))]  # face 1 missed
    assert tracker.carried() == [Box(120, 50, 80, 80), Box(400, 52, 80, 80)]
    assert tracker.carried() == tracker.carried()  # does not step


def test_predict_without_motion_history_carries_the_last_box():
    tracker = BoxTracker()
    tracker.update([Box(10, 20, 30, 40), Box(200, 20, 30, 40)])
    assert tracker.predict() == [(1, Box(10, 20, 30, 40)), (2, Box(200, 20, 30, 40))]


def test_fast_motion_without_overlap_falls_back_to_centroid_distance():
    tracker = BoxTracker()
    # 70 px per frame on a 100 px face: IoU with the last box is 0.18 < 0.3 at the first jump.
    for frame in range(8):
        assert ids(tracker.update([Box(20 + 70 * frame, 100, 100, 100)])) == [1]


def test_distant_detection_is_a_new_face_not_a_jump():
    tracker = BoxTracker()
    tracker.update([Box(20, 100, 100, 100)])
    assert ids(tracker.update([Box(400, 100, 100, 100)])) == [2]


WARM, COLD = (80, 120, 200), (200, 120, 40)  # BGR: an orange and a blue face


def picture(box: Box, colour: tuple[int, int, int]) -> np.ndarray:
    """A mid-grey 640 x 480 frame with a patch of ``colour`` filling ``box``."""
    image = np.full((480, 640, 3), 128, np.uint8)
    image[box.y : box.y2, box.x : box.x2] = colour
    return image


def step_by_centre_distance(tracker: IouTracker, colour: tuple[int, int, int]) -> list[int | None]:
    """A face of WARM colours, then a face of ``colour`` 0.8 box widths beside it (IoU 0.11): their ids."""
    first, beside = Box(100, 100, 80, 80), Box(164, 100, 80, 80)
    return [
        tracker.update([Detection(first)], picture(first, WARM))[0].track_id,
        tracker.update([Detection(beside)], picture(beside, colour))[0].track_id,
    ]


def test_a_face_of_other_colours_beside_a_track_is_a_new_face():
    assert step_by_centre_distance(IouTracker(), COLD) == [1, 2]


def test_a_face_of_the_same_colours_matched_by_centre_distance_keeps_its_id():
    assert step_by_centre_distance(IouTracker(), WARM) == [1, 1]


def test_grey_frames_leave_the_match_to_the_boxes():
    """A camera without colour (a night camera's grey frames): no colours to tell faces apart, so none refused."""
    tracker = IouTracker()
    first, beside = Box(100, 100, 80, 80), Box(164, 100, 80, 80)
    assert tracker.update([Detection(first)], picture(first, (60, 60, 60)))[0].track_id == 1
    assert tracker.update([Detection(beside)], picture(beside, (220, 220, 220)))[0].track_id == 1


def test_two_crossing_faces_keep_their_ids():
    tracker = BoxTracker()
    left_to_right, right_to_left = None, None
    for frame in range(30):
        a = Box(100 + 15 * frame, 100, 100, 100)  # moving right
        b = Box(535 - 15 * frame, 110, 100, 100)  # moving left, crossing a around frame 14
        # When the boxes overlap most, the last boxes give near-equal IoU to both detections: matching against
        # the extrapolated positions keeps the ids with their motion.
        assigned = dict((box, track_id) for track_id, box in tracker.update([b, a]))
        if frame == 0:
            left_to_right, right_to_left = assigned[a], assigned[b]
        assert (assigned[a], assigned[b]) == (left_to_right, right_to_left), f"ids swapped at frame {frame}"


def test_crossing_faces_keep_ids_when_one_is_hidden_for_a_few_frames():
    tracker = BoxTracker()
    for frame in range(30):
        a = Box(100 + 15 * frame, 100, 100, 100)
        b = Box(535 - 15 * frame, 100, 100, 100)
        if 13 <= frame <= 15:
            boxes = [a]  # b behind a: the detector finds one face
        else:
            boxes = [a, b]
        assert ids(tracker.update(boxes)) == [1, 2][: len(boxes)], f"frame {frame}"


def test_equal_iou_is_settled_by_centre_distance():
    track_box = Box(100, 100, 100, 100)
    nearer, farther = Box(150, 120, 100, 100), Box(160, 100, 100, 100)  # centres 53.9 and 60 px away
    assert nearer.iou(track_box) == farther.iou(track_box)
    for order in ([farther, nearer], [nearer, farther]):
        tracker = BoxTracker(iou_threshold=0.2)
        tracker.update([track_box])
        assigned = {box: track_id for track_id, box in tracker.update(order)}
        assert assigned == {nearer: 1, farther: 2}


def test_a_face_that_left_is_not_carried_but_its_id_returns_with_it():
    tracker = BoxTracker(max_missed=5)
    ((face_id, _),) = tracker.update([Box(100, 100, 80, 80)])
    assert [i for i, _ in tracker.predict()] == [face_id]
    assert tracker.update([]) == []  # the face left the picture
    assert tracker.predict() == []  # so nothing is drawn between detections
    assert face_id in tracker.active_ids  # but the track waits to be re-associated
    assert tracker.update([Box(102, 100, 80, 80)]) == [(face_id, Box(102, 100, 80, 80))]
    assert [i for i, _ in tracker.predict()] == [face_id]


def test_keypoints_move_with_the_carried_box():
    tracker = IouTracker()
    eyes = ((110.0, 120.0), (150.0, 120.0))
    tracker.update([Detection(Box(100, 100, 60, 60), 0.9, eyes)])
    tracker.update([Detection(Box(110, 104, 60, 60), 0.9, tuple((x + 10, y + 4) for x, y in eyes))])
    (carried,) = tracker.predict()
    assert carried.box == Box(120, 108, 60, 60)
    assert carried.detection.keypoints == ((130.0, 128.0), (170.0, 128.0))  # moved as far as the box


def test_without_tracking_detections_stand_alone_and_are_carried_unchanged():
    tracker = NullTracker()
    detection = Detection(Box(10, 10, 50, 50))
    assert [(t.track_id, t.box, t.detected) for t in tracker.update([detection])] == [(None, detection.box, True)]
    assert [(t.track_id, t.box, t.detected) for t in tracker.predict()] == [(None, detection.box, False)]
    assert tracker.active_ids == set() and tracker.carried() == []


def test_reset_ends_every_track_and_the_next_faces_get_new_ids():
    tracker = BoxTracker()
    before = ids(tracker.update([Box(100, 100, 50, 50), Box(300, 100, 50, 50)]))
    tracker.inner.reset()
    assert tracker.active_ids == set() and tracker.carried() == [] and tracker.predict() == []
    after = ids(tracker.update([Box(100, 100, 50, 50), Box(300, 100, 50, 50)]))  # the same places, new faces
    assert not set(before) & set(after)
