"""make bench-edge: its numbers come from a real run of the device loop on a real clip, and its flicker is what
the shown labels did."""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.edge import table
from bench.loop import ShownAgainstSmoothed, fer_edge_loop, label_flicker, shown_against_smoothed
from fer_edge.types import Box, Face, Prediction
from fer_edge.vision.smoothing import HeldPrediction

PERFORMER = Path(__file__).resolve().parents[2] / "shared" / "clips" / "performer-640x360.mp4"


def face(track: int | None, label: str | None) -> Face:
    shown = Prediction(("a", "b"), (0.9, 0.1) if label == "a" else (0.1, 0.9)) if label else None
    return Face(Box(0, 0, 10, 10), shown, track, shown)


def test_flicker_counts_label_changes_between_consecutive_frames_of_one_track():
    frames = [
        [face(1, "a"), face(2, "b")],
        [face(1, "a"), face(2, "a")],  # track 2 changes
        [face(1, "b")],  # track 1 changes; track 2 is gone
        [face(1, "b"), face(2, "b")],  # track 2 is back: no pair with its last frame two frames ago
        [face(1, None), face(None, "a")],  # an unread face and an untracked one make no pair
        [face(1, "a")],
    ]
    assert label_flicker(frames) == (2 / 4, 4)


def test_contradiction_counts_shown_labels_against_a_clear_smoothed_majority():
    labels = ("a", "b")

    def held(scores, shown, unsure=False):
        smoothed = HeldPrediction(labels, scores, held=labels.index(shown), held_unsure=unsure)
        return Face(Box(0, 0, 10, 10), Prediction(labels, scores), 1, smoothed)

    frames = [
        [held((0.3, 0.7), "a")],  # b holds most of the probability, a is shown: a contradiction
        [held((0.45, 0.55), "b")],
        [held((0.55, 0.45), "b")],  # a has just over half: a contradiction too
        [held((0.7, 0.3), "a", unsure=True)],  # "?" shown against a clear a
        [held((0.48, 0.52 - 1e-9), "b"), Face(Box(0, 0, 5, 5), Prediction(labels, (0.9, 0.1)), 2)],  # unsmoothed
    ]
    # held: a label shown that is not the top smoothed class, whatever the lead; "?" is not a label held
    assert shown_against_smoothed(frames) == ShownAgainstSmoothed(contradiction=3 / 5, held=2 / 5, faces=5)
    assert shown_against_smoothed([[]]) == ShownAgainstSmoothed(0.0, 0.0, 0)


def test_the_loop_row_is_a_real_run_on_a_real_clip():
    if not PERFORMER.is_file():
        pytest.skip(f"real clip not found: {PERFORMER}")
    row = fer_edge_loop(PERFORMER, {}, max_frames=60)
    assert row["frames"] == 60 and row["fps"] > 0
    assert set(row["ms_per_frame"]) == {"read", "detect", "classify", "annotate", "record", "total"}
    assert row["ms_per_frame"]["record"] > 0  # recording on, as the table says
    assert row["frames_with_faces"] >= 40 and row["faces"] >= row["frames_with_faces"] and row["tracks"] >= 1
    assert row["flicker_pairs"] > 0 and 0 <= row["flicker"] <= 1
    assert row["smoothed_faces"] > 0 and 0 <= row["contradiction"] <= 1 and 0 <= row["unsure"] <= 1
    assert 0 <= row["held"] <= 1
    text = table([{"clip": "`performer-640x360.mp4`", "loop": "defaults", **row}], "this machine")
    assert "| `performer-640x360.mp4` | defaults |" in text and "this machine" in text
