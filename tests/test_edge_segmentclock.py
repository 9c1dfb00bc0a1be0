"""SegmentClock: the stems the MP4 and events sinks share, and when a segment is full."""

import calendar
import logging

from fer_edge.record.clock import SegmentClock

NOON = calendar.timegm((2026, 12, 5, 12, 0, 0))


def test_stems_are_unique_in_the_folder_and_follow_the_wall_clock(tmp_path):
    (tmp_path / "20261205-120000-0001.mp4").write_bytes(b"")  # left by an earlier run
    clock = SegmentClock(tmp_path, 60.0, 30.0, wall_clock=lambda: NOON)
    first, second = clock.next_stem(), clock.next_stem()
    assert (first, second) == ("20261205-120000-0002", "20261205-120000-0003")
    assert clock.stem == second


def test_a_clock_stepped_back_still_names_segments_after_the_newest(tmp_path):
    (tmp_path / "20261205-120000-0001.jsonl").write_text("")
    clock = SegmentClock(tmp_path, 60.0, 30.0, wall_clock=lambda: NOON - 3600)
    assert clock.next_stem() > "20261205-120000-0001"


def test_a_clock_stepped_back_is_said_once_until_it_catches_up(tmp_path, caplog):
    (tmp_path / "20261205-120000-0001.jsonl").write_text("")
    wall = [NOON - 3600]
    clock = SegmentClock(tmp_path, 60.0, 30.0, wall_clock=lambda: wall[0])
    with caplog.at_level(logging.WARNING):
        stems = [clock.next_stem() for _ in range(3)]
        wall[0] = NOON + 3600
        stems.append(clock.next_stem())
        wall[0] = NOON
        stems.append(clock.next_stem())
    assert stems == sorted(stems) and stems[3].startswith("20261205-130000")
    assert len([r for r in caplog.records if "is behind the newest recording's name" in r.getMessage()]) == 2


def test_names_run_at_most_a_day_ahead_of_the_clock(tmp_path, caplog):
    """One recording named while the clock read a year ahead: later names follow the clock again, they are not
    chained a year ahead after it."""
    (tmp_path / "20271205-120000-0001.mp4").write_bytes(b"")
    clock = SegmentClock(tmp_path, 60.0, 30.0, wall_clock=lambda: NOON)
    with caplog.at_level(logging.WARNING):
        stems = [clock.next_stem() for _ in range(3)]
    assert stems == ["20261205-120000-0001", "20261205-120000-0002", "20261205-120000-0003"]
    assert [r.getMessage() for r in caplog.records] == [
        "recording: the newest recording's name (2027-12-05 12:00:00 UTC) is more than a day ahead of the clock "
        "(2026-12-05 12:00:00 UTC); naming recordings by the clock again, so they sort before it"
    ]


def test_a_segment_is_full_half_a_frame_before_its_length(tmp_path):
    clock = SegmentClock(tmp_path, 10.0, 30.0)
    assert not clock.full(None, 100.0)  # no frame yet
    assert not clock.full(0.0, 9.9)
    assert clock.full(0.0, 10.0 - 1 / 60)  # the frame that would start the next segment
