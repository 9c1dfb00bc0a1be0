"""fer_edge.analysis.report: tracks.csv and timeline.png from a hand-written events file."""

from __future__ import annotations

import csv
import json
import logging
import struct
import sys
import tracemalloc
import zlib
from datetime import datetime
from pathlib import Path

import pytest

from fer_edge.analysis import report

try:
    import matplotlib  # noqa: F401

    HAS_MATPLOTLIB = True
except ImportError:
    HAS_MATPLOTLIB = False
needs_matplotlib = pytest.mark.skipif(not HAS_MATPLOTLIB, reason="timeline.png needs matplotlib")

LABELS = ["angry", "disgust", "fear", "happy", "sad", "surprise", "neutral"]
T0 = 1_764_000_000.0  # 2025-11-24T16:00:00Z
FPS = 10.0


def face(track, label, box=(100, 80, 120, 120)):
    scores = {name: (0.7 if name == label else 0.05) for name in LABELS}
    return {"box": list(box), "track": track, "label": label, "score": 0.7, "scores": scores}


def write_events(path: Path) -> None:
    """Track 1 for 2 s: 14 frames happy, 6 neutral. Track 2 appears at 1 s: 4 sad, 6 angry, then leaves.
    Two faces the tracker did not place. A face-free frame and a blank line in between."""
    lines = []
    for frame in range(20):
        faces = [face(1, "happy" if frame < 14 else "neutral")]
        if 10 <= frame < 20:
            faces.append(face(2, "sad" if frame < 14 else "angry", box=(400, 90, 100, 100)))
        if frame in (3, 4):
            faces.append(face(None, "surprise", box=(300, 10, 40, 40)))
        lines.append(json.dumps({"t": T0 + frame / FPS, "frame": frame, "faces": faces}))
        if frame == 5:
            lines.append("")
    lines.append(json.dumps({"t": T0 + 2.0, "frame": 20, "faces": []}))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def png_chunks(path: Path) -> list[tuple[bytes, bytes]]:
    """Parse a PNG file chunk by chunk, checking signature and CRCs."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    chunks, offset = [], 8
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind = data[offset + 4 : offset + 8]
        body = data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks.append((kind, body))
        offset += 12 + length
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    return chunks


@pytest.fixture
def events_file(tmp_path) -> Path:
    path = tmp_path / "events.jsonl"
    write_events(path)
    return path


def test_tracks_csv_rows(events_file, tmp_path):
    written = report.main([events_file], tmp_path / "out")
    assert written[0] == tmp_path / "out" / "tracks.csv"

    rows = read_csv(written[0])
    assert [row["track"] for row in rows] == ["1", "2", "untracked"]
    header = list(rows[0])
    assert header[:6] == ["track", "start", "end", "duration_s", "frames", "dominant"]
    # Labels from the data, in the model's order (the order of the scores dicts).
    assert header[6:] == [f"share_{label}" for label in LABELS]

    one, two, untracked = rows
    assert datetime.fromisoformat(one["start"]).timestamp() == pytest.approx(T0)
    assert datetime.fromisoformat(one["end"]).timestamp() == pytest.approx(T0 + 1.9)
    assert one["start"].endswith("+00:00")
    assert float(one["duration_s"]) == pytest.approx(1.9)
    assert one["frames"] == "20"
    assert one["dominant"] == "happy"
    assert float(one["share_happy"]) == pytest.approx(0.7) and float(one["share_neutral"]) == pytest.approx(0.3)

    assert datetime.fromisoformat(two["start"]).timestamp() == pytest.approx(T0 + 1.0)
    assert (two["frames"], two["dominant"]) == ("10", "angry")
    assert float(two["share_sad"]) == pytest.approx(0.4) and float(two["share_angry"]) == pytest.approx(0.6)

    assert (untracked["frames"], untracked["dominant"]) == ("2", "surprise")
    assert float(untracked["duration_s"]) == pytest.approx(0.1)

    for row in rows:
        assert sum(float(row[f"share_{label}"]) for label in LABELS) == pytest.approx(1.0, abs=1e-3)


@needs_matplotlib
def test_timeline_png_is_a_valid_image(events_file, tmp_path):
    assert report.main([events_file], tmp_path) == [tmp_path / "tracks.csv", tmp_path / "timeline.png"]
    chunks = png_chunks(tmp_path / "timeline.png")
    width, height = struct.unpack(">II", chunks[0][1][:8])
    assert width >= 600 and height >= 150
    pixels = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(set(pixels)) > 10  # drawn, not blank


def test_truncated_last_line_and_garbage_are_skipped(events_file, tmp_path, caplog):
    complete = read_csv(report.main([events_file], tmp_path / "complete")[0])
    with events_file.open("a", encoding="utf-8") as f:
        f.write('{"t": NaN, "frame": 21, "faces": []}\n')
        f.write('{"t": 1764000002.1, "frame": 21, "faces": [{"box": [1, 2, 3, 4], "track": 1, "lab')
    with caplog.at_level(logging.WARNING, logger="fer_edge.analysis.report"):
        rows = read_csv(report.main([events_file], tmp_path / "cut")[0])
    assert rows == complete
    assert "skipped 2 unreadable line(s): 23, 24" in caplog.text


def test_labels_come_from_the_data(tmp_path):
    path = tmp_path / "events.jsonl"
    lines = [
        {"t": T0 + i, "frame": i, "faces": [{"box": [0, 0, 9, 9], "track": 5, "label": label}]}
        for i, label in enumerate(["calm", "calm", "joy"])
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines), encoding="utf-8")
    rows = read_csv(report.main([path], tmp_path)[0])
    assert rows == [
        {
            "track": "5",
            "start": "2025-11-24T16:00:00.000+00:00",
            "end": "2025-11-24T16:00:02.000+00:00",
            "duration_s": "2.000",
            "frames": "3",
            "dominant": "calm",
            "share_calm": "0.6667",
            "share_joy": "0.3333",
        }
    ]


def test_several_files_are_merged_in_time_order(events_file, tmp_path):
    later = tmp_path / "later.jsonl"
    later.write_text(json.dumps({"t": T0 + 5.0, "frame": 50, "faces": [face(1, "neutral")]}) + "\n")
    rows = read_csv(report.main([later, events_file], tmp_path / "out")[0])
    one = rows[0]
    assert (one["frames"], float(one["duration_s"])) == ("21", pytest.approx(5.0))


def test_a_folder_of_rotated_files_is_read_as_one_run(events_file, tmp_path, monkeypatch):
    lines = events_file.read_text().splitlines()
    folder = tmp_path / "recordings"
    folder.mkdir()
    (folder / "seg-0001.jsonl").write_text("\n".join(lines[:8]) + "\n")
    (folder / "events.jsonl").write_text("\n".join(lines[8:]) + "\n")
    (folder / "seg-0001.mp4").write_bytes(b"not events")
    monkeypatch.chdir(tmp_path)
    written = report.main([folder])  # output defaults to the events' folder, not the current one
    assert written[0] == folder / "tracks.csv" and not (tmp_path / "tracks.csv").exists()
    assert read_csv(written[0]) == read_csv(report.main([events_file], tmp_path / "single")[0])


def test_an_id_seen_again_after_a_restart_is_another_track(tmp_path):
    path = tmp_path / "events.jsonl"
    first_run = [{"t": T0 + i / FPS, "frame": i, "faces": [face(1, "happy")]} for i in range(5)]
    second_run = [{"t": T0 + 60 + i / FPS, "frame": i, "faces": [face(1, "sad")]} for i in range(3)]
    path.write_text("".join(json.dumps(e) + "\n" for e in first_run + second_run))
    rows = read_csv(report.main([path], tmp_path)[0])
    assert [(r["track"], r["frames"], r["dominant"]) for r in rows] == [("1", "5", "happy"), ("1#2", "3", "sad")]


def test_a_quick_restart_starts_new_tracks_even_within_the_time_gap(tmp_path):
    """`systemctl restart` or a model deploy takes about two seconds, far under TRACK_GAP_S: the frame index
    starting again at 0 is what tells the runs apart (their files given in any order)."""
    first = tmp_path / "20261128-100000-0001.jsonl"
    second = tmp_path / "20261128-100008-0001.jsonl"
    first.write_text(
        "".join(json.dumps({"t": T0 + i / FPS, "frame": i, "faces": [face(1, "happy")]}) + "\n" for i in range(60))
    )
    second.write_text(
        "".join(
            json.dumps({"t": T0 + 60 / FPS + 2 + i / FPS, "frame": i, "faces": [face(1, "sad")]}) + "\n"
            for i in range(30)
        )
    )
    rows = read_csv(report.main([second, first], tmp_path / "out")[0])
    assert [(r["track"], r["frames"], r["dominant"]) for r in rows] == [("1", "60", "happy"), ("1#2", "30", "sad")]


def test_faces_without_a_label_are_left_out(tmp_path):
    path = tmp_path / "events.jsonl"
    unlabeled = {"box": [1, 2, 3, 4], "track": 1, "label": None, "score": None, "scores": None}
    events = [
        {"t": T0, "frame": 0, "faces": [face(1, "fear"), unlabeled]},
        {"t": T0 + 1, "frame": 1, "faces": [unlabeled]},
    ]
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    rows = read_csv(report.main([path], tmp_path)[0])
    assert [(r["track"], r["frames"], r["dominant"]) for r in rows] == [("1", "1", "fear")]


def test_a_tie_goes_to_the_label_seen_first(tmp_path):
    path = tmp_path / "events.jsonl"
    labels = ["sad", "happy", "happy", "fear", "sad", "fear"]
    path.write_text(
        "".join(
            json.dumps({"t": T0 + i, "frame": i, "faces": [face(7, label)]}) + "\n" for i, label in enumerate(labels)
        )
    )
    assert read_csv(report.main([path], tmp_path)[0])[0]["dominant"] == "sad"


@pytest.mark.parametrize(
    "span_s, unit", [(0, "seconds"), (299, "seconds"), (1800, "minutes"), (10 * 3600, "hours"), (40 * 86400, "days")]
)
def test_the_timeline_unit_follows_the_span(span_s, unit):
    assert report._time_unit(span_s)[0] == unit


def test_a_long_recording_is_summarised_in_little_memory(tmp_path):
    """A week of one face at 15 fps is 9 million observations: a Pi must be able to hold them. Read as Python
    objects they took some 475 bytes each at the peak (4 GB for the week); held in arrays about 80 (tracemalloc
    sees both)."""
    path = tmp_path / "events.jsonl"
    frames = 40_000
    with path.open("w", encoding="utf-8") as out:
        for i in range(frames):
            label = LABELS[(i // 50) % len(LABELS)]
            out.write(json.dumps({"t": T0 + i / 15, "frame": i, "faces": [face(1 + i // 10_000, label)]}) + "\n")
    tracemalloc.start()
    try:
        events = report.collect_tracks([path])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert [s.frames for s in events.tracks.values()] == [10_000] * 4
    assert peak / frames < 100, f"{peak / frames:.0f} bytes per observation"


def test_without_matplotlib_the_csv_is_still_written(events_file, tmp_path, monkeypatch, caplog):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes `import matplotlib` raise ImportError
    with caplog.at_level(logging.WARNING, logger="fer_edge.analysis.report"):
        written = report.main([events_file], tmp_path)
    assert written == [tmp_path / "tracks.csv"]
    assert not (tmp_path / "timeline.png").exists()
    assert len(read_csv(written[0])) == 3
    messages = [r.getMessage() for r in caplog.records]
    assert messages == ["timeline.png not written: the timeline needs matplotlib (pip install matplotlib)"]


@needs_matplotlib
def test_many_tracks_keep_the_timeline_readable(tmp_path):
    path = tmp_path / "events.jsonl"
    tracks = report.MAX_TIMELINE_TRACKS + 20
    events = [{"t": T0 + i, "frame": i, "faces": [face(i + 1, "happy")] * (1 + i % 3)} for i in range(tracks)]
    path.write_text("".join(json.dumps(e) + "\n" for e in events))
    written = report.main([path], tmp_path)
    assert len(read_csv(written[0])) == tracks
    _, height = struct.unpack(">II", png_chunks(written[1])[0][1][:8])
    assert height < 100 * (2 + 0.45 * report.MAX_TIMELINE_TRACKS)


@needs_matplotlib
def test_events_without_faces_give_a_header_only_csv(tmp_path):
    path = tmp_path / "events.jsonl"
    path.write_text(json.dumps({"t": T0, "frame": 0, "faces": []}) + "\n\n")
    written = report.main([path], tmp_path)
    assert written[0].read_text().splitlines() == ["track,start,end,duration_s,frames,dominant"]
    png_chunks(written[1])


def test_missing_events_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="events file not found"):
        report.main([tmp_path / "nope.jsonl"], tmp_path)
    with pytest.raises(FileNotFoundError, match="no events files"):
        report.main([tmp_path], tmp_path)


@needs_matplotlib
def test_command_line(events_file, tmp_path, capsys):
    assert report._cli([str(events_file), "-o", str(tmp_path / "cli")]) == 0
    out = tmp_path / "cli"
    assert capsys.readouterr().out.split() == [str(out / "tracks.csv"), str(out / "timeline.png")]
    assert report._cli([str(tmp_path / "nope.jsonl"), "-o", str(tmp_path)]) == 1
    assert "events file not found" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["fer_edge.cli", "report"], ["fer_edge.analysis.report"]])
def test_both_report_commands_write_beside_the_events_and_say_where(command, events_file, tmp_path):
    import subprocess

    folder = tmp_path / "recordings"
    folder.mkdir()
    (folder / "events.jsonl").write_text(events_file.read_text())
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = subprocess.run(
        [sys.executable, "-m", *command, str(folder / "events.jsonl")],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[0] == str(folder / "tracks.csv")
    assert (folder / "tracks.csv").is_file() and not list(elsewhere.iterdir())
    named = subprocess.run(
        [sys.executable, "-m", *command, str(folder), "--output", str(tmp_path / "named")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert named.returncode == 0 and (tmp_path / "named" / "tracks.csv").is_file(), named.stderr


@pytest.mark.parametrize("command", [["fer_edge.cli", "report"], ["fer_edge.analysis.report"]])
@pytest.mark.parametrize("where", ["a file", "inside a file"])
def test_a_report_folder_that_is_a_file_is_one_line_and_leaves_the_file_alone(command, where, events_file, tmp_path):
    import subprocess

    in_the_way = tmp_path / "notes.txt"
    in_the_way.write_text("kept\n")
    output = in_the_way if where == "a file" else in_the_way / "report"
    result = subprocess.run(
        [sys.executable, "-m", *command, str(events_file), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "Errno" not in result.stderr, result.stderr
    said = [line for line in result.stderr.splitlines() if str(output) in line]
    assert len(said) == 1, result.stderr
    assert ("is a file, not a folder" if where == "a file" else "Not a directory") in said[0]
    assert in_the_way.read_text() == "kept\n" and not list(events_file.parent.glob("tracks.csv"))


def test_a_report_the_disk_cannot_take_leaves_the_earlier_one_whole(tmp_path):
    """A file size limit plays the full disk: the new tracks.csv fails part way, the old one stays as it was."""
    import resource
    import signal
    import subprocess

    events = tmp_path / "events.jsonl"
    lines = [json.dumps({"t": T0 + i / FPS, "frame": i, "faces": [face(i, "happy")]}) for i in range(3000)]
    events.write_text("\n".join(lines) + "\n")
    output = tmp_path / "report"
    report.main([events], output)
    earlier = (output / "tracks.csv").read_bytes()
    assert len(earlier) > 100_000

    def small_disk() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG) instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, resource.RLIM_INFINITY))

    result = subprocess.run(
        [sys.executable, "-m", "fer_edge.cli", "report", str(events), "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=60,
        preexec_fn=small_disk,
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("fer-edge: error:")]
    assert errors == [f"fer-edge: error: cannot write {output / 'tracks.csv'}: File too large"], result.stderr
    assert "Traceback" not in result.stderr
    assert (output / "tracks.csv").read_bytes() == earlier
    assert sorted(p.name for p in output.iterdir()) == sorted(["tracks.csv", *(["timeline.png"] * HAS_MATPLOTLIB)])


@pytest.mark.parametrize("command", [["fer_edge.cli", "report"], ["fer_edge.analysis.report"]])
@pytest.mark.parametrize("blank", ["--output", "EVENTS"])
def test_a_blank_argument_is_refused_not_taken_as_the_current_folder(command, blank, events_file, tmp_path):
    """What an unset shell variable gives: ``fer-edge report "$EVENTS" -o "$OUT"``."""
    import subprocess

    here = tmp_path / "here"
    here.mkdir()
    (here / "events.jsonl").write_text(events_file.read_text())
    args = [str(events_file), "--output", ""] if blank == "--output" else [""]
    result = subprocess.run(
        [sys.executable, "-m", *command, *args], cwd=here, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    named = "-o/--output" if blank == "--output" else "EVENTS"
    assert result.stderr.splitlines()[-1].endswith(f"error: argument {named}: expected a value, got an empty string")
    assert sorted(p.name for p in here.iterdir()) == ["events.jsonl"]
    assert not (events_file.parent / "tracks.csv").exists()


def test_a_file_run_is_reported_on_the_frames_own_timeline(demo_clip, tmp_path):
    """The demo clip runs faster than real time here: its timeline is the clip's, not the processing time."""
    import subprocess

    out = tmp_path / "out"
    config = tmp_path / "config.yaml"
    config.write_text(f"recording:\n  output_dir: {out}\n  segment_seconds: 2.0\n")
    run = subprocess.run(
        [sys.executable, "-m", "fer_edge.cli", "run", "--config", str(config), "--source", str(demo_clip)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 0, run.stderr
    lines = [json.loads(line) for path in sorted(out.glob("*.jsonl")) for line in path.read_text().splitlines()]
    seen = [line for line in lines if line["faces"]]
    clip_span = seen[-1]["ts"] - seen[0]["ts"]
    processing_span = seen[-1]["t"] - seen[0]["t"]
    assert clip_span > 10 and processing_span < clip_span - 1  # else this machine cannot show the difference
    rows = read_csv(report.main([out], tmp_path / "report")[0])
    first = min(datetime.fromisoformat(row["start"]) for row in rows)
    last = max(datetime.fromisoformat(row["end"]) for row in rows)
    assert (last - first).total_seconds() == pytest.approx(clip_span, abs=0.05)
    assert sum(int(row["frames"]) for row in rows) == sum(len(line["faces"]) for line in seen)


@pytest.mark.parametrize("command", [["fer_edge.cli", "report"], ["fer_edge.analysis.report"]])
def test_a_video_given_as_events_is_refused_and_nothing_is_touched(command, demo_clip, events_file, tmp_path):
    import shutil
    import subprocess

    earlier = report.main([events_file], tmp_path)  # a report already there
    before = {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in earlier}
    video = shutil.copy(demo_clip, tmp_path / "20261206-140427-0001.mp4")
    result = subprocess.run([sys.executable, "-m", *command, str(video)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert len(result.stderr.strip().splitlines()) == 1 and "is not an events file" in result.stderr
    assert "Traceback" not in result.stderr
    assert {path: (path.read_bytes(), path.stat().st_mtime_ns) for path in earlier} == before
