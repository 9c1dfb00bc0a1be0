"""The review side of a running ``fer-edge run`` on the demo clip: recordings served for playback with byte ranges,
the recordings, events and summary APIs from the index, thumbnails, and the review page in headless Chromium."""

from __future__ import annotations

import calendar
import contextlib
import json
import os
import re
import socket
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

import av
import cv2
import numpy as np
import pytest
from livehelpers import ChromiumPage, chromium, free_port, http_get, web_run

from fer_edge.record.index import DB_NAME, THUMBS_DIR
from fer_edge.record.naming import stem_time

if TYPE_CHECKING:
    from fer_edge.serve.web import WebServer

TOKEN = "review-token-0c41d9"
ISO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?[+-]\d\d:\d\d$")


@pytest.fixture(scope="module")
def server(demo_clip, tmp_path_factory):
    """A realtime, looping run with the live view, a token and 2 s segments; at least three finished ones."""
    folder = tmp_path_factory.mktemp("review")
    port = free_port()
    with web_run(demo_clip, folder, port, TOKEN, segment_seconds=2.0) as process:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            _, status, _, body = get(port, "/api/recordings", TOKEN)
            if status == 200 and len([r for r in json.loads(body)["recordings"] if r["thumbnail"]]) >= 3:
                break
            time.sleep(0.3)  # 503 while the index is first built: the answer says to try again
        yield {"port": port, "out": folder / "out", "process": process}


def get(port: int, path: str, token: str | None = TOKEN, headers: dict | None = None):
    return http_get(port, path, token, headers)


def fetch(server, path: str, headers: dict | None = None):
    return get(server["port"], path, TOKEN, headers)


def recordings(server) -> list[dict]:
    return json.loads(fetch(server, "/api/recordings?per_page=200")[3])["recordings"]


def indexed(server) -> dict:
    """The oldest recording that is fully indexed (has a thumbnail)."""
    return [r for r in recordings(server) if r["thumbnail"]][-1]


@contextlib.contextmanager
def folder_view(folder: Path) -> Iterator[WebServer]:
    """The live view and review of ``folder``, served from this process: no camera, no token."""
    from fer_edge.serve.live import LiveFeed
    from fer_edge.serve.web import WebServer

    web = WebServer(LiveFeed(recordings_dir=folder), host="127.0.0.1", port=0, token=None).start()
    try:
        yield web
    finally:
        web.close()


def test_a_range_request_gets_exactly_those_bytes(server):
    rec = indexed(server)
    data = (server["out"] / rec["name"]).read_bytes()
    _, status, headers, body = fetch(server, rec["url"], {"Range": "bytes=100-1099"})
    assert status == 206 and body == data[100:1100]
    assert headers["Content-Range"] == f"bytes 100-1099/{len(data)}" and headers["Content-Length"] == "1000"
    assert headers["Accept-Ranges"] == "bytes" and headers["Content-Type"] == "video/mp4"
    _, status, headers, body = fetch(server, rec["url"], {"Range": "bytes=-500"})
    assert status == 206 and body == data[-500:]
    _, status, headers, body = fetch(server, rec["url"], {"Range": f"bytes={len(data) - 10}-"})
    assert status == 206 and body == data[-10:]
    _, status, headers, body = fetch(server, rec["url"], {"Range": f"bytes=0-{len(data) + 999}"})
    assert status == 206 and body == data and headers["Content-Range"] == f"bytes 0-{len(data) - 1}/{len(data)}"


def test_a_range_past_the_end_is_416_and_the_whole_file_plays_inline(server):
    rec = indexed(server)
    data = (server["out"] / rec["name"]).read_bytes()
    _, status, headers, body = fetch(server, rec["url"], {"Range": f"bytes={len(data)}-"})
    assert status == 416 and headers["Content-Range"] == f"bytes */{len(data)}" and body == b""
    _, status, headers, body = fetch(server, rec["url"])
    assert status == 200 and body == data and headers["Accept-Ranges"] == "bytes"
    assert headers["Content-Disposition"] == f'inline; filename="{rec["name"]}"'
    _, status, headers, _ = fetch(server, rec["url"] + "?download=1")
    assert status == 200 and headers["Content-Disposition"].startswith("attachment")
    assert fetch(server, "/recordings/../" + rec["name"])[1] == 404


def test_recordings_carry_start_duration_frames_faces_and_a_thumbnail(server):
    listing = recordings(server)
    names = [r["name"] for r in listing]
    assert names == sorted(names, reverse=True)  # newest first
    rec = indexed(server)
    assert ISO.match(rec["start"]) and rec["faces"] >= 1
    assert rec["url"] == f"/recordings/{rec['name']}" and rec["bytes"] > 0 and rec["mtime"] > 0
    with av.open(str(server["out"] / rec["name"])) as container:
        stream = container.streams.video[0]
        frames = sum(1 for packet in container.demux(stream) if packet.size)
        duration = float(stream.duration * stream.time_base) if stream.duration else None
    assert rec["frames"] == frames
    assert rec["duration_s"] == pytest.approx(2.0, abs=0.1)
    if duration is not None:
        assert rec["duration_s"] == pytest.approx(duration, abs=0.1)
    stem_utc = calendar.timegm(time.strptime(rec["name"][:15], "%Y%m%d-%H%M%S"))
    assert abs(datetime.fromisoformat(rec["start"]).timestamp() - stem_utc) < 2  # the name's UTC, with an offset
    _, status, headers, jpeg = fetch(server, rec["thumbnail"])
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert status == 200 and headers["Content-Type"] == "image/jpeg" and image.shape[1] == 320
    assert fetch(server, "/thumbnails/../index.sqlite3")[1] == 404
    page = json.loads(fetch(server, "/api/recordings?per_page=2&page=2")[3])
    assert page["recordings"] and [r["name"] for r in page["recordings"]] == names[2:4]


def test_recordings_filter_by_expression_and_day(server):
    listing = recordings(server)
    label = next(iter(indexed(server)["labels"]))
    chosen = json.loads(fetch(server, f"/api/recordings?per_page=200&label={label}")[3])["recordings"]
    assert chosen and all(label in r["labels"] for r in chosen)
    assert len(chosen) == len([r for r in listing if label in r["labels"]])
    day = datetime.fromisoformat(listing[0]["start"]).astimezone().strftime("%Y-%m-%d")
    assert json.loads(fetch(server, f"/api/recordings?day={day}")[3])["total"] >= len(listing)
    assert json.loads(fetch(server, "/api/recordings?day=2001-01-01")[3])["recordings"] == []
    assert fetch(server, "/api/recordings?day=yesterday")[1] == 400


def test_events_say_which_recording_holds_them_and_where(server):
    rec = indexed(server)
    found = json.loads(fetch(server, f"/api/events?recording={rec['name']}")[3])["events"]
    assert found[0]["event"] == "start" and found[-1]["event"] == "end"
    lines = [json.loads(line) for line in (server["out"] / (rec["name"][:-4] + ".jsonl")).read_text().splitlines()]
    first_ts = lines[0]["ts"]
    by_frame = {line["frame"]: line for line in lines}
    for event in found:
        assert {"time", "track", "event", "label", "recording", "offset_s"} <= set(event)
        assert ISO.match(event["time"]) and event["recording"] == rec["name"]
        line = by_frame[event["frame"]]  # the frame the event happened at, and its offset in the video
        assert event["offset_s"] == pytest.approx(line["ts"] - first_ts, abs=0.002)
        assert any(face["track"] == event["track"] and face["label"] == event["label"] for face in line["faces"])
        assert 0 <= event["offset_s"] <= rec["duration_s"]
    newest = json.loads(fetch(server, "/api/events?limit=5")[3])["events"]
    assert len(newest) == 5 and [e["seq"] for e in newest] == sorted(e["seq"] for e in newest)


def test_summary_counts_the_faces_shown_per_expression(server):
    rec = indexed(server)
    lines = [json.loads(line) for line in (server["out"] / (rec["name"][:-4] + ".jsonl")).read_text().splitlines()]
    start = int(lines[0]["t"] // 60 * 60)
    later = json.loads(fetch(server, f"/api/summary?from={start}&to={start + 60}&bucket_s=60")[3])
    assert len(later["buckets"]) == 1 and ISO.match(later["buckets"][0]["start"])
    mine = {}
    for line in lines:
        if start <= line["t"] < start + 60:
            for face in line["faces"]:
                mine[face["label"]] = mine.get(face["label"], 0) + 1
    counts = later["buckets"][0]["counts"]
    assert all(counts.get(label, 0) >= n for label, n in mine.items())  # others in the same minute add to it
    day = json.loads(fetch(server, "/api/summary")[3])
    assert day["bucket_s"] == 3600 and len(day["buckets"]) in (24, 25) and day["labels"]
    assert fetch(server, "/api/summary?bucket_s=61")[1] == 400
    assert fetch(server, "/api/summary?from=soon")[1] == 400
    assert fetch(server, "/api/summary?from=nan")[1] == 400
    assert fetch(server, "/api/events?to=inf")[1] == 400


@pytest.mark.parametrize("path", ["/review", "/api/summary", "/api/recordings", "/thumbnails/x.jpg"])
def test_the_review_needs_the_token(server, path):
    assert get(server["port"], path, token=None)[1] == 401


def test_the_page_plays_a_recording_from_an_events_moment(server):
    """Debian's Chromium decodes H.264: the recording itself plays, from an event's offset (the page goes on with
    the next recording at the end of this one, so what it played is noted as it plays)."""
    rec = indexed(server)
    found = json.loads(fetch(server, f"/api/events?recording={rec['name']}")[3])["events"]
    moment = max(found, key=lambda e: e["offset_s"] if e["offset_s"] < rec["duration_s"] - 1.0 else -1)
    url = f"http://127.0.0.1:{server['port']}/review?token={TOKEN}#play={rec['name']}&t={moment['offset_s']}"
    with ChromiumPage() as page:
        page.goto(url)
        page.wait_for("!!$('player')")
        page.evaluate(
            "window.firstPlayed = null;"
            " $('player').addEventListener('timeupdate', () => { const s = $('state').dataset;"
            " if (!window.firstPlayed && s.seeked !== '' && Number(s.played) > 0.2)"
            " window.firstPlayed = {recording: s.recording, seeked: Number(s.seeked), time: Number(s.time)}; })"
        )
        played = page.wait_for("window.firstPlayed", timeout=60)
    assert isinstance(played, dict) and played["recording"] == rec["name"], played
    assert abs(played["seeked"] - moment["offset_s"]) < 1.0  # the seek lands on the moment
    assert played["time"] > played["seeked"] + 0.2  # and it plays on from there


def test_the_page_lists_recordings_with_thumbnails_timelines_and_the_chart(server, tmp_path):
    url = f"http://127.0.0.1:{server['port']}/review?token={TOKEN}"
    before = len(recordings(server))
    png = tmp_path / "review.png"
    rec = indexed(server)
    with ChromiumPage(window="1200,800") as page:
        page.goto(url)
        page.wait_for(  # what the page loads after it shows: the list, three thumbnails, the timelines, the chart
            "Number($('recordings').dataset.count) > 0"
            " && document.querySelectorAll('img.thumb[data-ok=\"1\"]').length >= 3"
            " && [...document.querySelectorAll('canvas.timeline')].slice(1, 4)"
            "     .every((c) => Number(c.dataset.segments) >= 1)"
            " && Number($('chart').dataset.bars) >= 1"
        )
        shown = page.evaluate("Number($('recordings').dataset.count)")
        assert min(10, before) <= shown <= min(10, len(recordings(server)))  # recording goes on meanwhile
        assert page.evaluate("document.querySelectorAll('canvas.timeline').length") >= 3
        page.goto("about:blank")
        page.goto(f"{url}#play={rec['name']}&t=1")
        page.wait_for("$('state').dataset.seeked !== '' && Number($('state').dataset.time) >= 1")
        page.screenshot(png)
    image = cv2.imread(str(png))
    player = image[95:430, 30:630]  # the video shows a frame, not the empty black box
    assert player.std() > 20
    if os.environ.get("REVIEW_SCREENSHOT"):  # docs/review-page.png is made this way, in 64 colours to stay small
        from PIL import Image

        small = cv2.cvtColor(cv2.resize(image, (900, 600), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2RGB)
        palette = Image.fromarray(small).quantize(colors=64, method=Image.Quantize.MEDIANCUT)
        palette.save(Path(os.environ["REVIEW_SCREENSHOT"]), optimize=True)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-0", (0, 0)),
        ("bytes=10-", (10, 99)),
        ("bytes=-1", (99, 99)),
        ("bytes=-500", (0, 99)),
        ("bytes=90-500", (90, 99)),
        ("bytes=100-", "416"),
        ("bytes=-0", "416"),
        ("bytes=5-1", None),  # not a valid range: the whole file
        ("bytes=0-1,5-6", None),  # several ranges: the whole file
        ("items=0-1", None),
        ("bytes=+1-2", None),
        ("bytes=-", None),
        ("bytes=\u00b2-", None),  # digits, but not ASCII ones: not a valid range
        ("bytes=0-\u00b9", None),
        ("bytes=1" + "0" * 5000 + "-", "416"),  # more digits than int() takes
        ("bytes=0-" + "9" * 5000, (0, 99)),
        ("bytes=-" + "9" * 5000, (0, 99)),
        ("bytes=" + "0" * 30 + "5-" + "0" * 30 + "6", (5, 6)),
    ],
)
def test_byte_ranges_are_read_as_http_says(header, expected):
    from fer_edge.serve.review import UNSATISFIABLE, parse_range

    found = parse_range(header, 100)
    if expected == "416":
        assert found is UNSATISFIABLE
    else:
        assert (found if found is None else (found.start, found.end)) == expected


def test_with_the_events_log_off_the_events_come_from_the_live_view(demo_clip, tmp_path):
    # the index then holds the videos only: the answer must not be an empty list from it
    port = free_port()
    with web_run(demo_clip, tmp_path, port, TOKEN, segment_seconds=1.0, sections={"events": {"enabled": False}}):
        deadline = time.monotonic() + 30
        found: list = []
        while time.monotonic() < deadline and not (found and (tmp_path / "out" / DB_NAME).exists()):
            status, body = get(port, "/api/events")[1::2]
            found = json.loads(body)["events"] if status == 200 else []
            time.sleep(0.3)
    assert (tmp_path / "out" / DB_NAME).exists() and not list((tmp_path / "out").glob("*.jsonl"))
    assert found and found[0]["event"] == "start" and found[0]["label"]
    for event in found:  # the same fields as from the index; no recording holds them
        assert ISO.match(event["time"]) and event["recording"] is None and event["offset_s"] is None
        assert {"seq", "track", "label", "score", "box", "frame"} <= set(event)


def test_an_output_folder_named_with_uri_characters_still_shows_the_index(demo_clip, tmp_path):
    # '#', '?' and '%' mean something in the URI the index is opened read-only with
    folder = tmp_path / "cam#1?50%off"
    folder.mkdir()
    port = free_port()
    with web_run(demo_clip, folder, port, TOKEN, segment_seconds=1.0):
        deadline = time.monotonic() + 30
        ready: list = []
        while time.monotonic() < deadline and not ready:
            status, body = get(port, "/api/recordings")[1::2]
            listing = json.loads(body)["recordings"] if status == 200 else []
            ready = [r for r in listing if r["labels"] and r["thumbnail"] and r["duration_s"] and r["faces"]]
            time.sleep(0.3)
        assert ready, listing  # durations, thumbnails and expressions come from the index
        rec = ready[0]
        found = json.loads(get(port, f"/api/events?recording={rec['name']}")[3])["events"]
        assert found and all(event["recording"] == rec["name"] for event in found)
    assert [path.name for path in tmp_path.iterdir()] == [folder.name]  # no empty database made beside it


def long_recording(clip: Path, path: Path, repeats: int) -> None:
    """``clip`` played ``repeats`` times over as one fragmented MP4 as the recorder writes them (its H.264 copied,
    not encoded again): a recording longer than the socket buffers hold, as an hour-long segment is."""
    from fer_edge.record.segment import MOVFLAGS

    with av.open(str(clip)) as source, av.open(str(path), "w", format="mp4", options={"movflags": MOVFLAGS}) as out:
        video = source.streams.video[0]
        stream = out.add_stream_from_template(video)
        packets = [p for p in source.demux(video) if p.dts is not None]
        step = packets[-1].pts + packets[-1].duration - packets[0].pts if packets else 0
        for n in range(repeats):
            for packet in packets:
                copy = av.Packet(bytes(packet))
                copy.pts, copy.dts, copy.time_base = packet.pts + n * step, packet.dts + n * step, packet.time_base
                copy.is_keyframe, copy.duration, copy.stream = packet.is_keyframe, packet.duration, stream
                out.mux(copy)


def test_recordings_being_sent_never_take_the_live_views_threads(server, demo_clip):
    """A few slow downloads of long recordings (each holds a thread while it is read) leave the live view and the
    APIs answered; one more recording at once gets 503 with Retry-After rather than a thread."""
    from fer_edge.serve.web import MAX_TRANSFERS

    name = "20000101-000000-0001.mp4"
    long_recording(demo_clip, server["out"] / name, 80)
    assert (server["out"] / name).stat().st_size > 8_000_000
    stalled = []
    try:
        for _ in range(MAX_TRANSFERS):
            sock = socket.create_connection(("127.0.0.1", server["port"]))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(f"GET /recordings/{name} HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
            assert sock.recv(12) == b"HTTP/1.1 200"  # being sent, and read no further
            stalled.append(sock)
        _, status, headers, _ = fetch(server, f"/recordings/{name}")
        assert status == 503 and headers["Retry-After"]
        assert fetch(server, "/api/latest.jpg")[1] == 200
        assert fetch(server, "/api/recordings")[1] == 200
    finally:
        for sock in stalled:
            sock.close()
        (server["out"] / name).unlink()


def test_a_day_picked_in_the_browser_is_the_browsers_day_not_the_devices(server, monkeypatch):
    """A browser whose day is not the device's (the other side of the date line) lists its own day's recordings."""
    from zoneinfo import ZoneInfo

    rec = recordings(server)[0]  # the newest: on the page's first page
    start = datetime.fromisoformat(rec["start"])
    device_day = start.strftime("%Y-%m-%d")  # the device's own offset is in the ISO time
    zone = next(z for z in ("Pacific/Kiritimati", "Etc/GMT+12") if start.astimezone(ZoneInfo(z)).date() != start.date())
    day = start.astimezone(ZoneInfo(zone)).strftime("%Y-%m-%d")
    assert day != device_day
    frm, to = start.timestamp() - 1, start.timestamp() + 1
    assert rec["name"] in [
        r["name"] for r in json.loads(fetch(server, f"/api/recordings?from={frm}&to={to}")[3])["recordings"]
    ]
    assert json.loads(fetch(server, "/api/recordings?from=2001-01-01T00:00:00Z&to=2001-01-02")[3])["total"] == 0

    url = f"http://127.0.0.1:{server['port']}/review?token={TOKEN}#day={day}"
    monkeypatch.setenv("TZ", zone)  # the browser's time zone; the device's is the test's own
    html = chromium(url, "--dump-dom").stdout.decode()
    assert int(re.search(r'id="recordings" data-count="(\d+)"', html).group(1)) >= 1, html[-3000:]
    assert f'data-name="{rec["name"]}"' in html


def test_the_recording_after_one_is_the_next_in_time_whatever_the_filters(server):
    listed = [r["name"] for r in recordings(server)]  # newest first
    oldest, second, newest = listed[-1], listed[-2], listed[0]
    for query in (f"after={oldest}", f"after={oldest}&label=disgust&page=1"):
        answer = json.loads(fetch(server, f"/api/recordings?{query}")[3])
        assert [r["name"] for r in answer["recordings"]] == [second], query
    assert json.loads(fetch(server, f"/api/recordings?after={newest}")[3])["recordings"] == []
    gone = "20000101-000000-0001.mp4"  # deleted by retention since it was played: the oldest still there follows
    assert [r["name"] for r in json.loads(fetch(server, f"/api/recordings?after={gone}")[3])["recordings"]] == [oldest]


def test_the_page_goes_on_with_the_next_recording_at_the_end_of_one(server):
    """A moment often runs on past the end of its segment: the player goes on with the next one by itself."""
    listed = [r for r in recordings(server) if r["duration_s"]]
    first, then = listed[-1], listed[-2]
    start = max(0.0, first["duration_s"] - 0.5)
    with ChromiumPage() as page:
        page.goto(f"http://127.0.0.1:{server['port']}/review?token={TOKEN}#play={first['name']}&t={start}")
        page.wait_for(f"$('state').dataset.continued === {json.dumps(first['name'])}", timeout=60)
        assert page.evaluate("$('state').dataset.recording") == then["name"]
        page.wait_for("Number($('state').dataset.played) > 0.2", timeout=60)  # and it plays


def test_a_recording_that_cannot_be_played_says_why(server):
    """One that is not there (deleted by retention since the list was loaded): the page says so instead of showing
    a black box."""
    url = f"http://127.0.0.1:{server['port']}/review?token={TOKEN}#play=20991231-000000-0001.mp4&t=1"
    html = chromium(url, "--dump-dom").stdout.decode()
    state = re.search(r'<output id="state"[^>]* data-error="404" class="bad">([^<]*)<', html)
    assert state and "no such recording" in state.group(1), html[:3000]


def test_on_a_phone_the_player_takes_the_screens_width(server, tmp_path):
    rec = indexed(server)
    png = tmp_path / "phone.png"
    url = f"http://127.0.0.1:{server['port']}/review?token={TOKEN}#play={rec['name']}&t=1"
    shot = chromium(url, f"--screenshot={png}", window="390,844", budget_ms=3000)
    assert shot.returncode == 0 and png.is_file(), shot.stderr.decode()[-2000:]
    band = cv2.imread(str(png)).astype(int)[100:180]  # rows across the player
    page = [np.abs(band - np.array(bgr)).max(axis=2) <= 4 for bgr in ((38, 34, 31), (26, 23, 21))]  # panel, page
    player = (~(page[0] | page[1])).mean(axis=0) > 0.9  # the columns where the video is, not the page's colours
    assert player.sum() > 300, player.sum()  # of 390 (two columns side by side left it 165)


def test_open_pages_polling_the_recordings_list_the_folder_once(server, tmp_path, monkeypatch):
    """Each open live page asks for the recordings every 10 s; on 20,000 of them one answer took 0.26 s of CPU,
    most of it listing the folder and reading every indexed row. A folder that did not change is listed once."""
    import contextlib
    import shutil
    import sqlite3
    import types

    from fer_edge.serve import live, review

    for rec in recordings(server)[-3:]:
        shutil.copyfile(server["out"] / rec["name"], tmp_path / rec["name"])
    indexer = sqlite3.connect(tmp_path / DB_NAME)  # held open, as the indexer holds it: its WAL files stay
    with contextlib.closing(sqlite3.connect(server["out"] / DB_NAME)) as source:
        source.backup(indexer)
    indexer.execute("SELECT 1 FROM recordings").fetchall()
    old = time.time() - 10
    os.utime(tmp_path, (old, old))
    listings = []
    real = live.finished_videos
    monkeypatch.setattr(live, "finished_videos", lambda folder: listings.append(folder) or real(folder))
    monkeypatch.setattr(review, "finished_videos", live.finished_videos, raising=False)
    handler = types.SimpleNamespace(app=types.SimpleNamespace(feed=live.LiveFeed(recordings_dir=tmp_path)))
    answers = [review._recordings(handler, {}) for _ in range(5)]  # type: ignore[arg-type]
    assert len(listings) == 1
    names = [r["name"] for r in recordings(server)[-3:]]
    assert all([r["name"] for r in answer["recordings"]] == names for answer in answers)
    assert all(r["thumbnail"] and r["duration_s"] for r in answers[-1]["recordings"])
    indexer.close()


def test_a_moment_in_the_segment_being_written_plays_as_far_as_it_is_written(server, tmp_path):
    """The newest moments are in the segment still being written (up to segment_seconds, 5 minutes by default):
    its address plays and seeks in Chromium from what is written, before the segment is finished."""

    rec = indexed(server)
    data = (server["out"] / rec["name"]).read_bytes()
    name = "20991231-000000-0001.mp4"
    (tmp_path / f"{name}.part").write_bytes(data[: len(data) * 3 // 4])  # a segment being written: its start
    with folder_view(tmp_path) as web:
        assert http_get(web.port, "/api/recordings", None)[3] == b'{"recordings":[],"page":1,"per_page":20,"total":0}'
        with ChromiumPage() as page:
            page.goto(f"{web.url}review#play={name}&t=0.5")
            seeked = float(str(page.wait_for("$('state').dataset.seeked", timeout=60)))
            page.wait_for(f"Number($('state').dataset.time) > {seeked}", timeout=60)
    assert abs(seeked - 0.5) < 0.2


def test_a_segment_finished_while_it_is_asked_for_is_sent(server, tmp_path, monkeypatch):
    """The recorder renames NAME.mp4.part to NAME.mp4 when the segment is finished: a request that looked for
    NAME.mp4 just before and for the .part just after still gets the recording, not a 404."""
    from fer_edge.serve import review

    data = (server["out"] / indexed(server)["name"]).read_bytes()
    name = "20991231-000000-0001.mp4"
    part = tmp_path / f"{name}.part"
    part.write_bytes(data)
    looked_for = []
    real_open = review._open_regular

    def open_while_finishing(path):
        looked_for.append(path.name)
        opened = real_open(path)
        if path.name == name and part.exists():
            part.rename(tmp_path / name)  # finished right after this look
        return opened

    monkeypatch.setattr(review, "_open_regular", open_while_finishing)
    with folder_view(tmp_path) as web:
        _, status, _, body = http_get(web.port, f"/recordings/{name}", None)
    assert looked_for[:2] == [name, f"{name}.part"]
    assert status == 200 and body == data


def test_a_browser_gets_the_json_compressed(server):
    """The review page asks for ten recordings' events at once, a quarter of a megabyte each for a busy 5 minute
    segment; a browser says it takes gzip and gets it. A day by the minute is such an answer."""
    import gzip

    now = time.time()
    query = f"/api/summary?from={now - 86400}&to={now - 120}&bucket_s=60"  # minutes past: counted already
    plain = fetch(server, query)
    packed = fetch(server, query, {"Accept-Encoding": "gzip, deflate, br"})
    assert "Content-Encoding" not in plain[2] and packed[2]["Content-Encoding"] == "gzip"
    assert packed[2]["Vary"] == "Accept-Encoding" and len(packed[3]) < len(plain[3]) / 5
    assert json.loads(gzip.decompress(packed[3])) == json.loads(plain[3])


def feed_with_events(folder: Path):
    """A live feed on ``folder`` whose frames gave three events: track 1 starts happy, track 2 starts sad, track 1
    turns sad."""
    from fer_edge.serve.live import LiveFeed
    from fer_edge.types import Box, Face, Frame, Prediction

    feed = LiveFeed(recordings_dir=folder)
    image = np.zeros((8, 8, 3), np.uint8)

    def face(track: int, label: str) -> Face:
        scores = (0.9, 0.1) if label == "happy" else (0.1, 0.9)
        return Face(Box(0, 0, 4, 4), Prediction(("happy", "sad"), scores), track_id=track)

    for index, faces in enumerate([[face(1, "happy")], [face(1, "happy"), face(2, "sad")], [face(1, "sad")]]):
        feed.write(Frame(image, index, index / 30), faces)
    return feed


def test_without_an_index_the_events_still_answer_their_filters(tmp_path):
    """Before the index is made, or with the events log off, the events come from the live view: a recording's
    moments are none of them (the page showed the live view's events under every recording), and an expression
    or a time asked for still filters them."""
    from fer_edge.serve.web import WebServer

    web = WebServer(feed_with_events(tmp_path), host="127.0.0.1", port=0, token=None).start()
    try:

        def found(query: str) -> list[tuple[str, int, str]]:
            status, body = http_get(web.port, f"/api/events{query}", None)[1::2]
            assert status == 200, body
            return [(e["event"], e["track"], e["label"]) for e in json.loads(body)["events"]]

        assert found("") == [("start", 1, "happy"), ("start", 2, "sad"), ("change", 1, "sad")]
        assert found("?label=sad") == [("start", 2, "sad"), ("change", 1, "sad")]
        assert found("?recording=20240101-000000-0001.mp4") == []
        now = time.time()
        assert found(f"?from={now - 3600}&to={now + 3600}") == found("")
        assert found(f"?from={now + 3600}") == [] and found(f"?to={now - 3600}") == []
        assert http_get(web.port, "/api/events?from=soon", None)[1] == 400
    finally:
        web.close()


def test_a_page_open_across_a_restart_goes_on_showing_the_events(tmp_path):
    """An open live page asks for the events after the last one it has; after the service restarted (the live
    view's count begins again) or the index was made again, that one lies ahead of every event, and the page
    showed none for as long as it took to come round to it: days."""
    from fer_edge.record.index import connect
    from fer_edge.serve.web import WebServer

    def found(port: int, since: int) -> tuple[list[int], int]:
        answer = json.loads(http_get(port, f"/api/events?since={since}", None)[3])
        return [e["seq"] for e in answer["events"]], answer["last"]

    web = WebServer(feed_with_events(tmp_path), host="127.0.0.1", port=0, token=None).start()
    try:
        assert found(web.port, 3) == ([], 3)  # up to date: nothing new
        assert found(web.port, 5000) == ([1, 2, 3], 3)  # from before the restart
        with contextlib.closing(connect(tmp_path / DB_NAME)) as db:  # the index, made again: its ids begin at 1
            db.execute(
                "INSERT INTO recordings (stem, video, start, frames, jsonl_bytes, faces) VALUES (?, ?, ?, 1, 1, 1)",
                ("20240101-000000-0001", "20240101-000000-0001.mp4", 1704067200.0),
            )
            db.executemany(
                "INSERT INTO events (stem, t, kind, track, label, score, box, frame, offset_s) "
                "VALUES ('20240101-000000-0001', ?, 'start', ?, 'happy', 0.9, '0,0,4,4', ?, 0.0)",
                [(1704067200.0 + n, n, n) for n in range(2)],
            )
            db.commit()
        assert found(web.port, 2) == ([], 2)
        assert found(web.port, 5000) == ([1, 2], 2)
        with contextlib.closing(connect(tmp_path / DB_NAME)) as db:  # the newest event's recording, deleted
            db.execute("UPDATE events SET stem = 'gone' WHERE id = 2")
            db.execute("DELETE FROM events WHERE stem = 'gone'")
            db.commit()
        assert found(web.port, 2) == ([], 2)  # nothing new: not the same events again
    finally:
        web.close()


def test_the_list_rounds_a_recordings_length_to_whole_minutes_and_seconds(demo_clip, tmp_path):
    """A five-minute segment lasts a few frames less than 300 s: the list said '4 min 60 s' for nearly every one."""
    from fer_edge.record.index import connect

    lengths = {"20240101-000000-0001": 299.967, "20240101-000500-0002": 59.97, "20240101-001000-0003": 12.34}
    with contextlib.closing(connect(tmp_path / DB_NAME)) as db:
        for stem, duration in lengths.items():
            long_recording(demo_clip, tmp_path / f"{stem}.mp4", 1)
            db.execute(
                "INSERT INTO recordings (stem, video, start, duration_s, frames, faces) VALUES (?, ?, ?, ?, 1, 1)",
                (stem, f"{stem}.mp4", calendar.timegm(time.strptime(stem[:15], "%Y%m%d-%H%M%S")), duration),
            )
        db.commit()
    with folder_view(tmp_path) as web:
        with ChromiumPage() as page:
            page.goto(f"{web.url}review")
            page.wait_for("$('recordings').dataset.count === '3'")
            shown = page.evaluate("[...document.querySelectorAll('#recordings .meta')].map((m) => m.textContent)")
    assert [str(text).split(" · ")[0] for text in shown] == ["12.3 s", "1 min 0 s", "5 min 0 s"], shown


def test_a_recording_whose_name_gives_no_time_still_leaves_the_list_working(demo_clip, tmp_path):
    """A file named like a recording but for a time that is none (a 13th month, copied in from elsewhere) made
    every listing of the folder fail with a 500, and the review page showed nothing at all."""

    names = ["20240101-000000-0001.mp4", "20241301-000000-0002.mp4", "20240132-000000-0003.mp4"]
    for name in names:
        long_recording(demo_clip, tmp_path / name, 1)
    made = datetime.fromtimestamp((tmp_path / names[1]).stat().st_mtime).strftime("%Y-%m-%d")
    with folder_view(tmp_path) as web:

        def listed(query: str) -> list[str]:
            status, body = http_get(web.port, f"/api/recordings{query}", None)[1::2]
            assert status == 200, body
            answer = json.loads(body)["recordings"]
            assert all(ISO.match(r["start"]) for r in answer)
            return [r["name"] for r in answer]

        assert listed("") == sorted(names, reverse=True)
        assert listed("?day=2024-01-01") == [names[0]]
        assert set(listed(f"?day={made}")) >= set(names[1:])  # by when the file was made


def _stem_at(t: float, n: int) -> str:
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(t)) + f"-{n:04d}"


def _recording_at(clip: Path, folder: Path, stem: str, t: float) -> None:
    """A real recording: its video, and an events file whose lines the clock read as ``t`` on, then written."""
    long_recording(clip, folder / f"{stem}.mp4", 1)
    face = {"track": 1, "label": "happy", "score": 0.9, "box": [10, 10, 40, 40]}
    lines = [json.dumps({"t": t + i / 10, "ts": 50.0 + i / 10, "frame": i, "faces": [face]}) for i in range(20)]
    (folder / f"{stem}.jsonl").write_text("\n".join(lines) + "\n")
    for path in (folder / f"{stem}.mp4", folder / f"{stem}.jsonl"):
        os.utime(path, (t + 10, t + 10))


def test_recordings_made_before_the_clock_was_set_list_in_the_order_they_were_made(demo_clip, tmp_path):
    """A Pi with no saved time boots at 1970 and records until network time steps its clock: those recordings
    were listed at their real times but sorted by their 1970 names, after everything else, and a player going on
    from the one before them skipped them. The list, its pages, its day and from/to filters and the recording
    after one follow when they were made, before the index has them and after."""
    from fer_edge.record.index import RecordingIndex
    from fer_edge.record.retention import ClockWatch

    real = 1728043200.0  # 2024-10-04 12:00 UTC, when network time set the clock
    previous = _stem_at(real - 3600, 1)  # the run before, on the right clock
    _recording_at(demo_clip, tmp_path, previous, real - 3600)
    boot = 86400.0
    wall, steady = {"t": boot}, {"t": 100.0}
    watch = ClockWatch(tmp_path, wall_clock=lambda: wall["t"], monotonic_clock=lambda: steady["t"])
    at_boot = [_stem_at(boot + 60 * n, n + 1) for n in (1, 2)]
    for n, stem in enumerate(at_boot, 1):
        _recording_at(demo_clip, tmp_path, stem, boot + 60 * n)
    wall["t"], steady["t"] = boot + 300.0, 400.0
    assert watch.check() == 0.0
    wall["t"], steady["t"] = real, 401.0
    step = watch.check()
    after_step = [_stem_at(real + 60 * n, n + 3) for n in (1, 2)]
    for stem in after_step:
        _recording_at(demo_clip, tmp_path, stem, real + 60 * after_step.index(stem) + 60)
    made = [previous, *at_boot, *after_step]  # oldest first
    real_start = {previous: real - 3600, at_boot[0]: boot + 60 + step, at_boot[1]: boot + 120 + step}
    assert real - 300 < real_start[at_boot[0]] < real_start[at_boot[1]] < real

    def check(web: WebServer) -> None:
        def listed(query: str) -> list[str]:
            status, body = http_get(web.port, f"/api/recordings?{query}", None)[1::2]
            assert status == 200, body
            return [r["name"][: -len(".mp4")] for r in json.loads(body)["recordings"]]

        assert listed("") == made[::-1]
        assert listed("per_page=2&page=2") == at_boot[::-1]
        assert listed(f"from={real - 300}&to={real}") == at_boot[::-1]
        day = datetime.fromtimestamp(real_start[at_boot[0]]).strftime("%Y-%m-%d")
        on_day = [
            s for s in made if datetime.fromtimestamp(real_start.get(s, stem_time(s))).strftime("%Y-%m-%d") == day
        ]
        assert listed(f"day={day}") == on_day[::-1] and at_boot[0] in on_day
        assert listed("day=1970-01-02") == []
        assert listed(f"after={previous}.mp4") == [at_boot[0]]
        assert listed(f"after={at_boot[1]}.mp4") == [after_step[0]]
        status, body = http_get(web.port, "/api/recordings?per_page=1&page=4", None)[1::2]
        start = datetime.fromisoformat(json.loads(body)["recordings"][0]["start"]).timestamp()
        assert start == pytest.approx(real_start[at_boot[0]], abs=2)

    with folder_view(tmp_path) as web:
        check(web)  # before the index: from their names and the noted step
        index = RecordingIndex(tmp_path)
        index.sync()
        index.close()
        check(web)


def test_videos_without_events_made_before_the_clock_was_set_list_at_their_real_times(demo_clip, tmp_path):
    """With the events log off the index took a recording's start from its name: one named on the 1970 boot clock
    was listed, and sorted, at 1970 even with the step noted."""
    from fer_edge.record.index import RecordingIndex
    from fer_edge.record.retention import ClockWatch

    real = 1728043200.0
    previous = _stem_at(real - 3600, 1)  # the run before, on the right clock
    long_recording(demo_clip, tmp_path / f"{previous}.mp4", 1)
    boot = 86400.0
    wall, steady = {"t": boot}, {"t": 100.0}
    watch = ClockWatch(tmp_path, wall_clock=lambda: wall["t"], monotonic_clock=lambda: steady["t"])
    at_boot = _stem_at(boot + 60, 1)
    long_recording(demo_clip, tmp_path / f"{at_boot}.mp4", 1)
    os.utime(tmp_path / f"{at_boot}.mp4", (boot + 70, boot + 70))
    wall["t"], steady["t"] = boot + 300.0, 400.0
    assert watch.check() == 0.0
    wall["t"], steady["t"] = real, 401.0
    step = watch.check()
    after_step = _stem_at(real + 60, 2)
    long_recording(demo_clip, tmp_path / f"{after_step}.mp4", 1)
    index = RecordingIndex(tmp_path)
    index.sync()
    index.close()
    with folder_view(tmp_path) as web:
        answer = json.loads(http_get(web.port, "/api/recordings", None)[3])["recordings"]
    assert [r["name"] for r in answer] == [f"{after_step}.mp4", f"{at_boot}.mp4", f"{previous}.mp4"]
    assert answer[1]["duration_s"] and answer[1]["frames"]  # indexed
    assert datetime.fromisoformat(answer[1]["start"]).timestamp() == pytest.approx(boot + 60 + step, abs=1)


def test_recordings_made_while_the_clock_ran_ahead_list_before_those_made_since(demo_clip, tmp_path):
    """A clock a year ahead (a wrong saved time), set back by network time while recording: what was made before
    the step kept next year's names and times, and sat at the top of the list, over every recording made since,
    for a year. They list at their real times, after the ones made since; the step is noted apart for the segment
    open across it, whose lines after it repeat the times of those before."""
    from fer_edge.record.clocksteps import read_clock_steps
    from fer_edge.record.events import CURRENT_NAME, STEM_MARKER_NAME
    from fer_edge.record.index import RecordingIndex
    from fer_edge.record.retention import ClockWatch

    real = 1728043200.0
    ahead = real + 365 * 86400.0
    wall, steady = {"t": ahead}, {"t": 100.0}
    watch = ClockWatch(tmp_path, wall_clock=lambda: wall["t"], monotonic_clock=lambda: steady["t"])
    while_ahead = [_stem_at(ahead + 60 * n, n) for n in (1, 2)]
    for n, stem in enumerate(while_ahead, 1):
        _recording_at(demo_clip, tmp_path, stem, ahead + 60 * n)
    across = _stem_at(ahead + 200, 3)
    (tmp_path / STEM_MARKER_NAME).write_text(across)
    (tmp_path / CURRENT_NAME).write_text("")
    wall["t"], steady["t"] = ahead + 300.0, 400.0
    assert watch.check() == 0.0
    wall["t"], steady["t"] = real, 401.0
    step = watch.check()
    noted = read_clock_steps(tmp_path)
    assert set(noted) == {*while_ahead, across} and noted[across] == [(None, step)]
    (tmp_path / STEM_MARKER_NAME).unlink()
    (tmp_path / CURRENT_NAME).unlink()
    since = [_stem_at(real + 60 * n, n + 3) for n in (1, 2)]
    for n, stem in enumerate(since, 1):
        _recording_at(demo_clip, tmp_path, stem, real + 60 * n)
    index = RecordingIndex(tmp_path)
    index.sync()
    index.close()
    with folder_view(tmp_path) as web:
        answer = json.loads(http_get(web.port, "/api/recordings", None)[3])["recordings"]
        after = json.loads(http_get(web.port, f"/api/recordings?after={while_ahead[1]}.mp4", None)[3])
    assert [r["name"][: -len(".mp4")] for r in answer] == [*since[::-1], *while_ahead[::-1]]
    starts = [datetime.fromisoformat(r["start"]).timestamp() for r in answer[2:]]
    assert starts == pytest.approx([ahead + 120 + step, ahead + 60 + step], abs=1)
    assert real - 300 < starts[1] < starts[0] < real
    assert [r["name"] for r in after["recordings"]] == [f"{since[0]}.mp4"]


def test_recordings_named_while_the_clock_ran_ahead_go_under_those_made_since(demo_clip, tmp_path):
    """A run on a clock a year ahead that ended before network time set it back (so no step was noted): its
    recordings, named next year, sat on top of the list for a year, over every recording made since."""
    now = time.time()
    year = 365 * 86400.0
    before = _stem_at(now - 7200, 1)
    ahead = [_stem_at(now + year + 60 * n, n + 1) for n in (1, 2)]
    since = [_stem_at(now - 600 + 60 * n, n + 3) for n in (1, 2)]
    for stem in [before, *ahead, *since]:
        long_recording(demo_clip, tmp_path / f"{stem}.mp4", 1)
    with folder_view(tmp_path) as web:

        def listed(query: str) -> list[str]:
            status, body = http_get(web.port, f"/api/recordings?{query}", None)[1::2]
            assert status == 200, body
            return [r["name"][: -len(".mp4")] for r in json.loads(body)["recordings"]]

        assert listed("") == [*since[::-1], before, *ahead[::-1]]
        assert listed("per_page=2") == since[::-1]
        assert listed(f"after={before}.mp4") == [since[0]]
        assert listed(f"after={ahead[0]}.mp4") == [ahead[1]]
        for odd in ("zzz", "x.mp4", f"{since[1]}.jsonl"):  # refused, not taken to sort after every name
            assert http_get(web.port, f"/api/recordings?after={odd}", None)[1] == 400, odd


def _pages_of_recordings(clip: Path, folder: Path, count: int) -> list[str]:
    """``count`` short recordings a minute apart in ``folder``, oldest first: the review page lists ten a page."""
    names = [f"20240101-00{n:02d}00-{n:04d}.mp4" for n in range(1, count + 1)]
    for name in names:
        long_recording(clip, folder / name, 1)
    return names


def test_the_recording_playing_is_marked_in_the_list_whenever_the_list_is_drawn(demo_clip, tmp_path):
    """A link to a moment (#play=) or a page turned back to the recording playing showed no recording marked as
    the one playing: the mark was set only on the list shown when it was picked."""

    names = _pages_of_recordings(demo_clip, tmp_path, 12)  # two pages of ten
    playing = names[-2]  # the second newest: on the first page
    marked = "[...document.querySelectorAll('#recordings li.playing')].map((li) => li.dataset.name)"
    with folder_view(tmp_path) as web:
        with ChromiumPage() as page:
            page.goto(f"{web.url}review#play={playing}&t=0")
            page.wait_for("$('recordings').dataset.count === '10'")
            assert page.evaluate(marked) == [playing]
            page.evaluate("$('next').click()")
            page.wait_for("$('recordings').dataset.count === '2'")
            assert page.evaluate(marked) == []
            page.evaluate("$('prev').click()")
            page.wait_for("$('recordings').dataset.count === '10'")
            assert page.evaluate(marked) == [playing]


# The page's fetch, with the answers for page 2 held until the test lets them go, and a count of finished lists.
HOLD_PAGE_2 = """
window.held = [];
const realFetch = window.fetch;
window.fetch = (url, options) => {
  const answer = realFetch(url, options);
  if (!String(url).includes("page=2")) return answer;
  return new Promise((resolve) => window.held.push(() => resolve(answer)));
};
const realLoadList = loadList;
window.listsDone = 0;
loadList = async () => { try { await realLoadList(); } finally { window.listsDone++; } };
"""


def test_a_list_answer_that_comes_late_does_not_replace_the_newer_one(demo_clip, tmp_path):
    """Next twice, quickly: the third page's answer came first and the second page's after it, and the list
    showed the second page under 'page 3 of 3'."""

    names = _pages_of_recordings(demo_clip, tmp_path, 25)  # three pages of ten
    shown = "[...document.querySelectorAll('#recordings li')].map((li) => li.dataset.name)"
    with folder_view(tmp_path) as web:
        with ChromiumPage() as page:
            page.goto(f"{web.url}review")
            page.wait_for("$('recordings').dataset.count === '10'")
            page.evaluate(HOLD_PAGE_2)
            page.evaluate("$('next').click(); $('next').click()")
            page.wait_for("window.listsDone === 1 && window.held.length === 1")
            page.evaluate("window.held[0]()")
            page.wait_for("window.listsDone === 2")
            assert page.evaluate(shown) == sorted(names, reverse=True)[20:]
            assert page.evaluate("$('pageinfo').textContent") == "page 3 of 3 (25)"


def test_moments_that_fail_to_load_leave_none_of_the_recording_before(server):
    """The moments of one recording were on show; the next one's could not be loaded (the device restarting):
    the first one's stayed, under the second one playing, and clicking them played the wrong recording."""
    first, second = [r for r in recordings(server) if r["thumbnail"]][-2:]
    moments = "[...$('events').children].map((li) => li.textContent)"
    with ChromiumPage() as page:
        page.goto(f"http://127.0.0.1:{server['port']}/review?token={TOKEN}#play={first['name']}&t=0")
        page.wait_for(f"$('events').dataset.recording === '{first['name']}' && $('events').children.length > 0")
        page.evaluate(
            "const realFetch = window.fetch;"
            f" window.fetch = (url, options) => String(url).includes('recording={second['name']}')"
            " ? Promise.reject(new Error('the device does not answer')) : realFetch(url, options);"
            f" play('{second['name']}', 0, {second['duration_s']})"
        )
        page.wait_for(f"$('events').dataset.recording === '{second['name']}'")
        shown = page.evaluate(moments)
    assert shown == ["no moments: the device does not answer"], shown


def test_a_thumbnail_too_big_to_serve_whole_is_refused_not_cut_short(tmp_path, caplog):
    """A thumbnail over the bound was sent cut at it, with a 200: a broken image passed off as a whole one."""
    from fer_edge.serve.review import MAX_THUMBNAIL_BYTES

    thumbs = tmp_path / THUMBS_DIR
    thumbs.mkdir()
    small = b"\xff\xd8" + bytes(1000) + b"\xff\xd9"
    (thumbs / "20240101-000000-0001.jpg").write_bytes(small)
    (thumbs / "20240101-000100-0002.jpg").write_bytes(b"\xff\xd8" + bytes(MAX_THUMBNAIL_BYTES) + b"\xff\xd9")
    with folder_view(tmp_path) as web:
        _, status, _, body = http_get(web.port, "/thumbnails/20240101-000000-0001.jpg", None)
        assert status == 200 and body == small
        _, status, _, body = http_get(web.port, "/thumbnails/20240101-000100-0002.jpg", None)
    assert status == 404 and body == b"404 thumbnail too big to serve\n"
    assert [r.getMessage() for r in caplog.records if r.name == "fer_edge.serve.review"] == [
        f"review: thumbnail 20240101-000100-0002.jpg is over {MAX_THUMBNAIL_BYTES} bytes, not one this device made; "
        "not served"
    ]
