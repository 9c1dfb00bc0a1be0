"""The live view of a running ``fer-edge run`` on the demo clip: token, stats, JPEG, MJPEG, events, recordings,
metrics, and the page as headless Chromium renders it."""

from __future__ import annotations

import contextlib
import gzip
import http.client
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from livehelpers import (
    ChromiumPage,
    chromium,
    free_port,
    http_get,
    start_run,
    stop,
    wait_for_port,
    web_run,
    write_config,
)

TOKEN = "test-token-5b1e0c"


@pytest.fixture(scope="module")
def server(demo_clip, tmp_path_factory):
    """A realtime, looping run with the live view on a free port, a token file, and 1 s recording segments."""
    folder = tmp_path_factory.mktemp("web")
    port = free_port()
    with web_run(demo_clip, folder, port, TOKEN, segment_seconds=1.0, stream_fps=10) as process:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the first frames, and a first finished segment
            if get(port, "/api/stats")[1] == 200 and list((folder / "out").glob("*.mp4")):
                break
            time.sleep(0.2)
        yield {"port": port, "folder": folder, "process": process}


ENDPOINTS = ["/", "/api/stats", "/api/latest.jpg", "/api/events", "/api/recordings", "/metrics", "/api/stream.mjpeg"]


@pytest.mark.parametrize("path", ENDPOINTS)
def test_every_endpoint_needs_the_token(server, path):
    for token in (None, "wrong-token", TOKEN[:-1]):
        _, status, headers, _ = get(server["port"], path, token=token)
        assert status == 401, (path, token)
        assert headers["WWW-Authenticate"].startswith("Bearer")
    if path != "/api/stream.mjpeg":  # an endless stream: read in its own test
        assert get(server["port"], path)[1] == 200


def get(port: int, path: str, token: str | None = TOKEN, headers: dict | None = None):
    return http_get(port, path, token, headers)


def stats_after_the_first_window(port: int) -> dict:
    """/api/stats once it gives a frame rate: none while the first window fills, then one."""
    from fer_edge.serve.live import FPS_WINDOW_S

    deadline = time.monotonic() + FPS_WINDOW_S + 10
    while True:
        _, status, headers, body = get(port, "/api/stats")
        assert status == 200 and headers["Content-Type"] == "application/json"
        stats = json.loads(body)
        if stats["fps"] is not None or time.monotonic() > deadline:
            return stats
        assert stats["uptime_s"] < FPS_WINDOW_S + 5  # no reading only while the first window fills
        time.sleep(0.5)


def test_stats_report_the_running_loop(server):
    stats = stats_after_the_first_window(server["port"])
    assert 5 < stats["fps"] < 40  # the demo clip plays at its 30 fps (less on a busy machine)
    assert stats["frames"] > 0 and stats["uptime_s"] > 0 and stats["frames_with_faces"] > 0
    assert set(stats["ms_per_frame"]) >= {"read", "detect", "classify", "annotate", "record", "total"}
    assert stats["model"] == "fer_int8.tflite" and stats["runtime"] and stats["detector"]
    assert stats["disk_free_bytes"] > 0
    assert stats["recording"]["active"] is True and stats["recording"]["finished"] >= 1
    assert stats["labels"] == ["angry", "disgust", "fear", "happy", "neutral", "sad", "surprise"]
    for face in stats["current_faces"]:
        assert face["label"] in stats["labels"] and len(face["box"]) == 4


def test_latest_jpeg_is_the_annotated_frame(server):
    _, status, headers, body = get(server["port"], "/api/latest.jpg")
    assert status == 200 and headers["Content-Type"] == "image/jpeg"
    assert body[:3] == b"\xff\xd8\xff" and body[-2:] == b"\xff\xd9"
    image = cv2.imdecode(np.frombuffer(body, np.uint8), cv2.IMREAD_COLOR)
    assert image.shape == (360, 640, 3) and image.std() > 10


def test_mjpeg_stream_sends_new_jpeg_frames(server):
    connection = http.client.HTTPConnection("127.0.0.1", server["port"], timeout=10)
    connection.request("GET", "/api/stream.mjpeg", headers={"Authorization": f"Bearer {TOKEN}"})
    response = connection.getresponse()
    assert response.status == 200
    content_type = response.headers["Content-Type"]
    assert content_type.startswith("multipart/x-mixed-replace; boundary=")
    boundary = content_type.split("boundary=")[1].encode()
    frames, started = [], time.monotonic()
    while len(frames) < 4:
        assert response.fp.readline().strip() == b"--" + boundary
        part_headers = {}
        while line := response.fp.readline().strip():
            name, _, value = line.decode().partition(":")
            part_headers[name.lower()] = value.strip()
        assert part_headers["content-type"] == "image/jpeg"
        jpeg = response.fp.read(int(part_headers["content-length"]))
        assert jpeg[:3] == b"\xff\xd8\xff" and response.fp.readline() == b"\r\n"
        frames.append(jpeg)
    elapsed = time.monotonic() - started
    connection.close()
    assert len(set(frames)) == 4  # the clip moves: each part is a new frame
    assert 0.2 < elapsed < 3.0  # at stream_fps 10, not as fast as the loop


def test_token_in_the_url_becomes_an_http_only_cookie(server):
    port = server["port"]
    response, status, headers, _ = get(port, f"/?token={TOKEN}", token=None)
    assert status == 303 and headers["Location"] == "/"  # the token leaves the address bar
    cookie = headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and TOKEN not in cookie
    session = cookie.split(";")[0]
    _, status, _, page = get(port, "/", token=None, headers={"Cookie": session})
    assert status == 200 and b"<img" in page and b"http" not in page.replace(b"http-equiv", b"")  # no CDN
    assert get(port, "/api/stats", token=None, headers={"Cookie": session + "0"})[1] == 401
    assert get(port, "/?token=wrong", token=None)[1] == 401


def test_events_list_track_starts_and_follow_since(server):
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        events = json.loads(get(server["port"], "/api/events")[3])
        if events["events"]:
            break
        time.sleep(0.2)
    assert events["events"][0]["type"] == "start" and events["events"][0]["label"]
    assert {"seq", "type", "track", "label", "score", "box", "t", "frame"} <= set(events["events"][0])
    last = events["last"]
    later = json.loads(get(server["port"], f"/api/events?since={last}")[3])
    assert all(event["seq"] > last for event in later["events"])
    assert get(server["port"], "/api/events?since=x")[1] == 400


def test_recordings_list_finished_videos_and_download_only_those(server):
    out = server["folder"] / "out"
    listing = json.loads(get(server["port"], "/api/recordings")[3])["recordings"]
    names = [r["name"] for r in listing]
    assert names and all(re.fullmatch(r"\d{8}-\d{6}-\d{4,}\.mp4", n) for n in names)
    assert (out / names[-1]).is_file()
    _, status, headers, body = get(server["port"], listing[-1]["url"])
    assert status == 200 and headers["Content-Type"] == "video/mp4"
    assert body == (out / names[-1]).read_bytes()
    parts = [p.name for p in out.glob("*.part")]
    (server["folder"] / "secret.mp4").write_bytes(b"not yours")
    for bad in [
        *parts,
        "../secret.mp4",
        "..%2fsecret.mp4",
        "%2e%2e/secret.mp4",
        "../config.yaml",
        "events.jsonl",
        names[-1] + "/",
        "/etc/passwd",
    ]:
        assert get(server["port"], f"/recordings/{bad}")[1] == 404, bad


def test_metrics_are_prometheus_text(server):
    stats_after_the_first_window(server["port"])  # the frame rate is exported once there is one
    deadline = time.monotonic() + 10
    while True:  # 1 s segments: between one segment's close and the next one's open, none is being written
        _, status, headers, body = get(server["port"], "/metrics")
        assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
        samples = {}
        for line in body.decode().splitlines():
            if not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                assert name.startswith(("fer_edge_", "process_"))
                samples[name] = float(value)
        if samples["fer_edge_recording"] == 1 or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert samples["fer_edge_frames_total"] > 0 and samples["fer_edge_fps"] > 0
    assert samples['fer_edge_stage_seconds_total{stage="detect"}'] > 0
    assert samples["fer_edge_disk_free_bytes"] > 0 and samples["fer_edge_recording_segments"] >= 1
    assert samples["fer_edge_recording"] == 1
    assert samples["fer_edge_web_requests_total"] >= 1 and samples["fer_edge_web_connections"] >= 1
    assert 'fer_edge_web_connections_closed_total{reason="refused"}' in samples


def test_page_in_headless_chromium_shows_the_live_image_and_stats(server, tmp_path):
    stats_after_the_first_window(server["port"])  # the page shows the frame rate once there is one
    url = f"http://127.0.0.1:{server['port']}/?token={TOKEN}"
    dom = chromium(url, "--dump-dom", window="1100,760", timeout=60)
    html = dom.stdout.decode()
    assert dom.returncode == 0 and "<html" in html, dom.stderr.decode()[-2000:]
    fps = re.search(r'id="fps">([\d.]+)<', html)
    assert fps and float(fps.group(1)) > 5, html[:3000]
    assert re.search(r"<td>detect</td><td class=\"n\">[\d.]+</td>", html)
    assert re.search(r'id="live" alt="live annotated view" src="blob:', html)
    assert re.search(r"<a href=\"/recordings/\d{8}-\d{6}-\d{4,}\.mp4\"", html)

    png = tmp_path / "live-view.png"
    shot = chromium(url, f"--screenshot={png}", window="1100,760", timeout=60)
    assert shot.returncode == 0 and png.is_file(), shot.stderr.decode()[-2000:]
    image = cv2.imread(str(png))
    assert image.shape[:2] == (760, 1100)
    # The live image fills the left column's top: a camera frame, not the empty dark box or the page background
    # (each one flat colour). Which frame of the clip it is varies: one without a face, and so without the
    # overlay's colours, has a std near 24 and a dozen colour bins.
    view = image[60:300, 20:560]
    assert view.std() > 12 and len(np.unique(view.reshape(-1, 3) // 32, axis=0)) > 6
    if os.environ.get("LIVE_VIEW_SCREENSHOT"):  # docs/live-view.png is made this way
        Path(os.environ["LIVE_VIEW_SCREENSHOT"]).write_bytes(png.read_bytes())


def test_a_non_loopback_address_without_a_token_is_refused(demo_clip, tmp_path):
    config = write_config(tmp_path / "c.yaml", {"web": {"enabled": True, "listen": f"0.0.0.0:{free_port()}"}})
    result = subprocess.run(start_args(config, demo_clip), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.startswith("fer-edge: error:")]
    assert lines == [
        "fer-edge: error: web.listen: 0.0.0.0 is reachable from other machines; set web.token_file "
        "(or web.token, or the systemd credential web-token), or listen on 127.0.0.1"
    ]


def test_a_token_file_readable_by_others_is_refused(demo_clip, tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o644)
    config = write_config(
        tmp_path / "c.yaml",
        {"web": {"enabled": True, "listen": f"127.0.0.1:{free_port()}", "token_file": str(token_file)}},
    )
    result = subprocess.run(start_args(config, demo_clip), capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"fer-edge: error: web.token_file: {token_file} is readable by others (mode 644)" in result.stderr
    assert TOKEN not in result.stderr


def test_the_token_can_come_from_a_systemd_credential(tmp_path, monkeypatch):
    from fer_edge.config.preflight import resolve_secret

    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert resolve_secret(None, None, "web-token", "web.token") is None
    (tmp_path / "web-token").write_text("from-systemd\n")
    (tmp_path / "web-token").chmod(0o640)
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    assert resolve_secret(None, None, "web-token", "web.token") == "from-systemd"
    assert resolve_secret("in-config", None, "web-token", "web.token") == "in-config"


def start_args(config: Path, source: Path) -> list[str]:
    return [
        sys.executable,
        "-m",
        "fer_edge.cli",
        "run",
        "--config",
        str(config),
        "--source",
        str(source),
        "--max-frames",
        "5",
        "--no-record",
    ]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"web.listen": "8080"}, "web.listen: expected host:port with a port 1-65535 (IPv6: [::1]:8080), got '8080'"),
        ({"web.stream_fps": 0}, "web.stream_fps: expected a number in [0.1, 30], got 0"),
        ({"web.stream_fps": 1e-300}, "web.stream_fps: expected a number in [0.1, 30], got 1e-300"),
        ({"web.token": ""}, "web.token: expected at least 16 characters, got 0"),
        ({"web.token": "short-secret"}, "web.token: expected at least 16 characters, got 12"),
        ({"web.token": "grüße-aus-der-werkstatt"}, "web.token: expected printable ASCII"),
        ({"mqtt.host": ""}, "mqtt.host: expected a host name"),
        ({"mqtt.host": "mqtt://user:pw@broker"}, "mqtt.host: expected a host name or address, not a URL"),
        ({"mqtt.host": "a" * 64 + ".lan"}, "mqtt.host: expected a host name (labels of 1-63"),
        ({"mqtt.device_id": "d" * 70_000}, "mqtt.device_id: expected at most 64 characters"),
        ({"mqtt.username": ""}, "mqtt.username: expected 1-256 characters"),
        ({"web.colour": 1}, "web.colour: unknown key"),
        ({"web.token": "a", "web.token_file": "/f"}, "web.token_file: set web.token or web.token_file, not both"),
        ({"mqtt.device_id": "a/b"}, "mqtt.device_id: expected letters, digits, _ and - only, got 'a/b'"),
        ({"mqtt.port": 70000}, "mqtt.port: expected an integer 1-65535, got 70000"),
        ({"mqtt.password": "p", "mqtt.password_file": "/f"}, "mqtt.password_file: set mqtt.password or"),
    ],
)
def test_web_and_mqtt_config_errors_name_the_key(overrides, message):
    from fer_edge.config import load_config
    from fer_edge.errors import ConfigError

    with pytest.raises(ConfigError) as error:
        load_config(None, overrides)
    assert str(error.value).startswith(message)
    assert "pw@" not in str(error.value) and "short-secret" not in str(error.value)


def test_a_viewer_that_reads_nothing_holds_up_neither_the_loop_nor_other_viewers(server):
    port = server["port"]
    stalled = socket.create_connection(("127.0.0.1", port))
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.sendall(f"GET /api/stream.mjpeg HTTP/1.1\r\nHost: pi\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode())
    try:
        before = json.loads(get(port, "/api/stats")[3])
        time.sleep(1.5)
        after = json.loads(get(port, "/api/stats")[3])
        assert after["viewers"] == 1
        assert (after["frames"] - before["frames"]) / 1.5 > 10  # frames still flow (the clip plays at 30 fps)
        test_mjpeg_stream_sends_new_jpeg_frames(server)  # a second viewer is served as usual
    finally:
        stalled.close()


def test_the_jpeg_cache_never_goes_back_to_an_older_frame(demo_clip):
    from fer_edge.serve.web import JpegFrames
    from fer_edge.testing import ScriptedFeed
    from fer_edge.types import Frame

    capture = cv2.VideoCapture(str(demo_clip))
    images = [capture.read()[1] for _ in range(3)]
    capture.release()
    newer, older = Frame(images[2], 2, 2 / 30), Frame(images[0], 0, 0.0)
    jpegs = JpegFrames(ScriptedFeed([(7, newer), (6, older), (7, newer)]), None, 75)  # type: ignore[arg-type]
    seq, jpeg = jpegs.latest()
    assert seq == 7 and jpeg is not None
    assert jpegs.latest() == (7, jpeg)  # frame 6 came late: still frame 7, not encoded again
    assert jpegs.latest() == (7, jpeg) and jpegs.encoded == 1
    decoded = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(decoded.astype(int) - images[2].astype(int)).mean() < 3


def test_stats_list_the_recordings_folder_again_only_when_it_changed(tmp_path, monkeypatch):
    """Three open pages polling /api/stats on a folder of 20,000 recordings cost the loop 20%: one listing each."""
    from fer_edge.serve import live

    listings = []
    real = live.finished_videos
    monkeypatch.setattr(live, "finished_videos", lambda folder: listings.append(folder) or real(folder))
    (tmp_path / "20260101-000000-0001.mp4").write_bytes(b"a finished recording")
    old = time.time() - 10
    os.utime(tmp_path, (old, old))
    feed = live.LiveFeed(recordings_dir=tmp_path)
    assert [feed.stats()["recording"]["finished"] for _ in range(5)] == [1] * 5
    assert len(listings) == 1
    (tmp_path / "20260101-000005-0002.mp4").write_bytes(b"another")
    assert feed.stats()["recording"]["finished"] == 2  # a change is seen at once
    (tmp_path / "20260101-000010-0003.mp4.part").write_bytes(b"being written")
    assert feed.stats()["recording"]["finished"] == 2


def test_the_first_frame_rate_comes_after_a_whole_window_of_frames():
    """A camera hands over its buffered frames at once when a run starts: a part of a window overstates the rate."""
    from fer_edge.pipeline import RunStats
    from fer_edge.serve.live import FPS_WINDOW_S, LiveFeed
    from fer_edge.types import Frame

    now = [100.0]
    run = RunStats()
    feed = LiveFeed(run_stats=lambda: run, monotonic_clock=lambda: now[0])
    frames = (Frame(np.zeros((36, 64, 3), np.uint8), index, index / 30) for index in range(1000))
    for _ in range(60):  # a burst of buffered frames in the first 0.1 s
        run.frames += 1
        feed.write(next(frames), [])
    readings = []
    for _ in range(int(FPS_WINDOW_S * 30) + 60):  # then 30 fps
        now[0] += 1 / 30
        run.frames += 1
        feed.write(next(frames), [])
        readings.append(feed.stats()["fps"])
    first = next(i for i, fps in enumerate(readings) if fps is not None)
    assert (first + 1) / 30 >= FPS_WINDOW_S - 0.05
    assert all(fps is not None and 29 < fps < 31.5 for fps in readings[first:]), readings[first:]


def test_without_a_token_a_page_from_another_name_cannot_read_the_camera(demo_clip, tmp_path):
    """DNS rebinding: another site's name pointed at 127.0.0.1 makes its page same-origin with a loopback live view
    that has no token. Chromium maps evil.test to 127.0.0.1 here, as a rebinding DNS server would."""
    port = free_port()
    config = write_config(
        tmp_path / "c.yaml",
        {
            "source": {"realtime": True, "loop": True},
            "recording": {"enabled": False},
            "web": {"enabled": True, "listen": f"127.0.0.1:{port}"},
        },
    )
    process = start_run(config, demo_clip, tmp_path / "stderr.log")
    try:
        wait_for_port(port, timeout=30)
        stats_after_the_first_window(port)
        rebound = chromium(f"http://evil.test:{port}/", "--dump-dom", "--host-resolver-rules=MAP evil.test 127.0.0.1")
        assert "403 forbidden" in rebound.stdout.decode() and "fps" not in rebound.stdout.decode()
        for host in (f"evil.test:{port}", f"127.0.0.1.evil.test:{port}"):
            assert http_get(port, "/api/latest.jpg", None, {"Host": host})[1] == 403
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}"):
            assert http_get(port, "/api/latest.jpg", None, {"Host": host})[1] == 200
        html = chromium(f"http://localhost:{port}/", "--dump-dom").stdout.decode()
        assert re.search(r'id="fps">[\d.]+<', html), html[:3000]
    finally:
        assert stop(process) == 0


def test_a_browser_signs_in_with_the_token_kept_out_of_its_address_and_history(server):
    """A person opening the live view gets a sign-in page; the token typed there becomes the session cookie,
    and neither the address, the page's history nor the browser's profile on disk ever holds it. The token in
    the address (the older way) is written into the profile: the check can see it there."""
    port = server["port"]
    with ChromiumPage() as page:
        page.goto(f"http://127.0.0.1:{port}/")
        page.wait_for("!!document.getElementById('token')")
        page.evaluate("document.getElementById('token').value = 'not-the-token-at-all'")
        page.evaluate("document.querySelector('#signin button').click()")
        assert "not this camera's token" in str(page.wait_for("document.getElementById('why').textContent"))
        page.evaluate(f"document.getElementById('token').value = {json.dumps(TOKEN)}")
        page.evaluate("document.querySelector('#signin button').click()")
        page.wait_for("!!document.getElementById('live') && document.getElementById('fps').textContent !== '–'")
        page.goto(f"http://127.0.0.1:{port}/review")
        page.wait_for("document.title.includes('review')")
        assert all(TOKEN not in url for url in page.history()), page.history()
        page.shutdown()
        assert page.profile_files_holding(TOKEN) == []
    with ChromiumPage() as page:
        page.goto(f"http://127.0.0.1:{port}/?token={TOKEN}")
        page.wait_for("!!document.getElementById('live') && document.getElementById('fps').textContent !== '–'")
        page.shutdown()
        assert page.profile_files_holding(TOKEN) != []


def test_only_a_browser_opening_a_page_gets_the_sign_in_page(server):
    port = server["port"]
    _, status, headers, body = get(port, "/review", token=None, headers={"Accept": "text/html,*/*;q=0.8"})
    assert status == 401 and headers["Content-Type"].startswith("text/html") and b'type="password"' in body
    assert "script-src" in headers["Content-Security-Policy"] and headers["WWW-Authenticate"].startswith("Bearer")
    _, status, headers, body = get(port, "/api/stats", token=None)
    assert status == 401 and headers["Content-Type"].startswith("text/plain") and b"Bearer" in body
    _, status, headers, _ = get(port, "/api/session", token="wrong-token-wrong-token")
    assert status == 401 and "Set-Cookie" not in headers
    _, status, headers, _ = get(port, "/api/session")
    assert status == 204
    session = headers["Set-Cookie"].split(";")[0]
    assert TOKEN not in session and get(port, "/api/stats", token=None, headers={"Cookie": session})[1] == 200


def test_a_refused_request_is_answered_once_and_its_connection_closed():
    """A client without the token that pipelines requests and reads nothing would hold a worker in each answer's
    send once the socket buffers are full: a few such connections took every thread from the live view."""
    from fer_edge.serve.live import LiveFeed
    from fer_edge.serve.web import WebServer

    cases = [
        (TOKEN, b"GET / HTTP/1.1\r\nHost: pi\r\nAccept: text/html\r\n\r\n", b"401"),
        (TOKEN, b"GET /api/stats HTTP/1.1\r\nHost: pi\r\nAuthorization: Bearer wrong-token-wrong\r\n\r\n", b"401"),
        (None, b"GET /api/stats HTTP/1.1\r\nHost: evil.test\r\n\r\n", b"403"),
    ]
    for token, request, status in cases:
        web = WebServer(LiveFeed(), host="127.0.0.1", port=0, token=token).start()
        try:
            with socket.create_connection(("127.0.0.1", web.port), timeout=5) as sock:
                sock.sendall(request * 20)
                answer = b""
                with contextlib.suppress(TimeoutError):  # what the unfixed server did: wait for more requests
                    while chunk := sock.recv(65536):
                        answer += chunk
        finally:
            web.close()
        assert answer.count(b"HTTP/1.1 ") == 1 and answer.startswith(b"HTTP/1.1 " + status), answer[:300]
        assert b"Connection: close" in answer


def test_the_session_cookie_is_found_among_other_sites_cookies():
    """Cookies are shared by every port of a host: another web app on the device (or behind the same name) may set
    one the standard library's parser stops at (a space, JSON, a name alone), and the session cookie after it
    was not seen: the sign-in page came back after every sign-in."""
    from fer_edge.serve.live import LiveFeed
    from fer_edge.serve.web import COOKIE_NAME, WebServer

    web = WebServer(LiveFeed(), host="127.0.0.1", port=0, token=TOKEN).start()
    try:
        _, status, headers, _ = get(web.port, "/api/session")
        assert status == 204
        session = headers["Set-Cookie"].split(";")[0].partition("=")[2]
        for others in ("theme=dark mode", 'prefs={"lang":"en"}', "seen", "name=caf\u00e9".encode().decode("latin-1")):
            for cookie in (f"{others}; {COOKIE_NAME}={session}", f"{COOKIE_NAME}={session}; {others}"):
                assert get(web.port, "/api/stats", token=None, headers={"Cookie": cookie})[1] == 200, cookie
        for wrong in (f"{COOKIE_NAME}={session}0", f"x{COOKIE_NAME}={session}", f"{COOKIE_NAME}=", "seen"):
            assert get(web.port, "/api/stats", token=None, headers={"Cookie": wrong})[1] == 401, wrong
    finally:
        web.close()


def test_a_request_with_a_body_is_answered_and_its_body_never_read_as_a_request():
    """No route reads a body: one sent with a GET was taken for the next request on the connection, so what a
    proxy in front passes on as one request's body (another request) was answered here as a request."""
    from fer_edge.serve.live import LiveFeed
    from fer_edge.serve.web import WebServer

    hidden = b"GET /api/recordings HTTP/1.1\r\nHost: localhost\r\n\r\n"
    web = WebServer(LiveFeed(), host="127.0.0.1", port=0, token=None).start()
    try:
        for framing in (f"Content-Length: {len(hidden)}".encode(), b"Transfer-Encoding: chunked"):
            body = hidden if framing.startswith(b"Content") else b"%x\r\n%s\r\n0\r\n\r\n" % (len(hidden), hidden)
            with socket.create_connection(("127.0.0.1", web.port), timeout=5) as sock:
                sock.sendall(b"GET /api/stats HTTP/1.1\r\nHost: localhost\r\n" + framing + b"\r\n\r\n" + body)
                answer = b""
                with contextlib.suppress(TimeoutError):
                    while chunk := sock.recv(65536):
                        answer += chunk
            assert answer.startswith(b"HTTP/1.1 200 ") and b'"frames"' in answer, answer[:300]
            assert answer.count(b"HTTP/1.1 ") == 1 and b"Connection: close" in answer, answer[:1000]
    finally:
        web.close()


def test_json_is_compressed_only_for_a_client_that_takes_gzip():
    """'gzip;q=0' says the client does not take gzip (RFC 9110, 12.5.3): it got gzip all the same."""
    from fer_edge.serve.live import LiveFeed
    from fer_edge.serve.web import WebServer

    web = WebServer(LiveFeed(), host="127.0.0.1", port=0, token=None).start()
    query = "/api/summary?bucket_s=60"  # a day by the minute: well over the size that is compressed
    try:
        for accepted, packed in [
            ("gzip", True),
            ("deflate, GZIP;q=0.5", True),
            ("br;q=1.0, gzip;q=0.001", True),
            ("gzip;q=0", False),
            ("identity, gzip; q=0.000", False),
            ("x-gzip-not", False),
            ("", False),
        ]:
            _, status, headers, body = http_get(web.port, query, None, {"Accept-Encoding": accepted})
            assert status == 200 and (headers.get("Content-Encoding") == "gzip") == packed, accepted
            assert json.loads(gzip.decompress(body) if packed else body)["bucket_s"] == 60
    finally:
        web.close()


def test_an_open_page_asks_to_sign_in_again_once_the_token_changed():
    """After the token was changed (and the service restarted with it), an open live page said 'offline' for
    good, while the device answered every request with 401: it now shows the sign-in page."""
    from fer_edge.serve.live import LiveFeed
    from fer_edge.serve.web import WebServer

    web = WebServer(LiveFeed(), host="127.0.0.1", port=0, token=TOKEN).start()
    port = web.port
    try:
        with ChromiumPage() as page:
            page.goto(f"http://127.0.0.1:{port}/?token={TOKEN}")
            page.wait_for("document.getElementById('status').textContent === 'live'")
            web.close()
            web = WebServer(LiveFeed(), host="127.0.0.1", port=port, token=TOKEN + "-changed").start()
            page.wait_for("!!document.getElementById('token')", timeout=30)
    finally:
        web.close()


def test_head_gets_the_headers_get_gets_also_when_refused():
    from fer_edge.serve.live import LiveFeed
    from fer_edge.serve.web import WebServer

    web = WebServer(LiveFeed(), host="127.0.0.1", port=0, token=TOKEN).start()
    try:
        answers = {}
        for method in ("GET", "HEAD"):
            connection = http.client.HTTPConnection("127.0.0.1", web.port, timeout=10)
            connection.request(method, "/review", headers={"Accept": "text/html"})
            response = connection.getresponse()
            body = response.read()
            connection.close()
            answers[method] = (response.status, response.headers["Content-Type"], response.headers["Content-Length"])
            assert body == b"" or method == "GET"
    finally:
        web.close()
    assert answers["HEAD"] == answers["GET"] and answers["GET"][1].startswith("text/html"), answers


def test_a_live_stream_opened_before_the_first_frame_sends_the_frames_that_come():
    """A viewer that came while there was no frame (before the camera's first, or while it was lost) was sent
    nothing once frames came: the stream's look at whether its viewer had left waited for the viewer to send
    something, up to the socket's 10 s timeout, then took the silence for a viewer gone."""
    from fer_edge.serve.live import LiveFeed
    from fer_edge.serve.web import WebServer
    from fer_edge.types import Frame

    feed = LiveFeed()
    web = WebServer(feed, host="127.0.0.1", port=0, token=None, stream_fps=5.0).start()
    try:
        with socket.create_connection(("127.0.0.1", web.port), timeout=5) as sock:
            sock.sendall(b"GET /api/stream.mjpeg HTTP/1.1\r\nHost: localhost\r\n\r\n")
            received = b""
            while b"\r\n\r\n" not in received:
                received += sock.recv(65536)
            assert received.startswith(b"HTTP/1.1 200")
            time.sleep(1.0)  # no frame: the stream looks whether its viewer left
            sock.settimeout(0.5)
            for index in range(15):  # then frames, 10 a second for 1.5 s
                feed.write(Frame(np.full((48, 64, 3), index, np.uint8), index, index / 10), [])
                with contextlib.suppress(TimeoutError):
                    received += sock.recv(65536)
                time.sleep(0.1)
        assert received.count(b"Content-Type: image/jpeg") >= 3, received[:200]
    finally:
        web.close()


def test_a_live_stream_left_while_there_is_no_frame_to_send_gives_back_its_place():
    """While the camera is lost (or before its first frame) a stream sends nothing, so it never saw its viewer
    leave: each viewer that came and went kept a place, and after a few of them every stream got 503."""
    from fer_edge.serve.live import LiveFeed
    from fer_edge.serve.web import WebServer
    from fer_edge.types import Frame

    request = b"GET /api/stream.mjpeg HTTP/1.1\r\nHost: localhost\r\n\r\n"
    lost = LiveFeed()
    lost.write(Frame(np.zeros((8, 8, 3), np.uint8), 0, 0.0), [])  # one frame, then none: the camera is lost
    for feed in (LiveFeed(), lost):
        web = WebServer(feed, host="127.0.0.1", port=0, token=None, max_viewers=2).start()
        try:
            for _ in range(2):
                with socket.create_connection(("127.0.0.1", web.port), timeout=5) as sock:
                    sock.sendall(request)
                    received = b""
                    while not received.endswith(b"\r\n\r\n" if feed is not lost else b"\xff\xd9\r\n"):
                        received += sock.recv(65536)  # all that is sent: closed with nothing unread, no reset
                    assert received.startswith(b"HTTP/1.1 200")
            deadline = time.monotonic() + 15
            while True:  # the places come back once the server looks at the connections, well within a second
                with socket.create_connection(("127.0.0.1", web.port), timeout=5) as sock:
                    sock.sendall(request)
                    answer = sock.recv(12)
                if answer == b"HTTP/1.1 200" or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            assert answer == b"HTTP/1.1 200", answer
        finally:
            web.close()
