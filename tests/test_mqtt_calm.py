"""fer-edge against a real mosquitto as Home Assistant sees it: the performer clip stays calm and labelled with
distinct retained snapshots, privacy replaces the snapshot at once, nothing before Home Assistant is there, and
two devices with one id warn instead of fighting."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from livehelpers import free_port, start_run, stop, write_config
from test_mqtt import BASE, DEVICE, DISCOVERY, Broker, Listener, mqtt_config

PERFORMER = Path(os.environ.get("FER_EDGE_CLIPS") or Path(__file__).resolve().parents[2] / "shared" / "clips") / (
    "performer-640x360.mp4"
)


@pytest.fixture
def broker(tmp_path):
    broker = Broker(tmp_path).start()
    yield broker
    broker.stop()


def _performer() -> Path:
    if not PERFORMER.exists():
        pytest.skip(f"{PERFORMER} missing (the shared clips, or set $FER_EDGE_CLIPS)")
    return PERFORMER


def test_performer_clip_is_calm_labelled_and_sends_distinct_retained_snapshots(broker, tmp_path):
    clip = _performer()
    listener = Listener(broker.port)
    process = start_run(mqtt_config(tmp_path, broker.port), clip, tmp_path / "stderr.log")
    try:
        listener.wait_for(DISCOVERY)
        discovery_at = time.monotonic()
        listener.wait_for(f"{BASE}/event")
        first_event_at = time.monotonic()
        time.sleep(24.0)
        span = time.monotonic() - first_event_at
    finally:
        assert stop(process) == 0, (tmp_path / "stderr.log").read_text()
        listener.close()
    assert first_event_at - discovery_at >= 2.5  # the default grace: Home Assistant has subscribed by then
    events = [json.loads(p) for t, p, _ in listener.seen if t == f"{BASE}/event"]
    snapshots = [(p, retain) for t, p, retain in listener.seen if t == f"{BASE}/snapshot"]
    rate = len(events) / span
    assert rate <= 0.5 + 1 / span, (len(events), span)
    assert len(events) >= 3  # the counter-metric: the performer's face is still reported (about 3 loops)
    assert all(e["label"] in ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise") for e in events)
    times = [e["t"] for e in events]
    assert all(later - earlier >= 1.9 for earlier, later in zip(times, times[1:]))  # never one moment twice
    assert len({e["seq"] for e in events}) == len(events)
    assert snapshots and len({p for p, _ in snapshots}) == len(snapshots)
    assert all(p[:3] == b"\xff\xd8\xff" for p, _ in snapshots)
    diagnostics = [json.loads(p) for t, p, _ in listener.seen if t == f"{BASE}/diagnostics"]
    rates = [d["fps"] for d in diagnostics]
    assert rates[0] is None  # no reading before a full window
    assert rates[-1] is not None and all(r <= 29.97 * 1.05 for r in rates if r is not None), rates
    present = [json.loads(p)["present"] for t, p, _ in listener.seen if t == f"{BASE}/state"]
    assert sum(a != b for a, b in zip(present, present[1:])) <= 1, present  # no flapping
    late = Listener(broker.port)  # Home Assistant restarted: the camera still has the last face
    assert late.wait_for(f"{BASE}/snapshot", lambda p, retain: retain) == snapshots[-1][0]
    late.close()


def test_privacy_on_replaces_the_retained_snapshot_at_once(broker, demo_clip, tmp_path):
    config = mqtt_config(tmp_path, broker.port)
    web_port = free_port()
    sections = yaml.safe_load(config.read_text())
    write_config(config, {**sections, "web": {"enabled": True, "listen": f"127.0.0.1:{web_port}"}})
    listener = Listener(broker.port)
    process = start_run(config, demo_clip, tmp_path / "stderr.log")
    try:
        discovery = json.loads(listener.wait_for(DISCOVERY))
        assert discovery["dev"]["configuration_url"] == f"http://127.0.0.1:{web_port}/"  # Home Assistant links it
        face = listener.wait_for(f"{BASE}/snapshot")
        listener.publish(f"{BASE}/privacy/set", "ON")
        listener.wait_for(f"{BASE}/privacy/state", lambda p, retain: p == b"ON")
        late = Listener(broker.port)  # may subscribe just before the blank goes out: then it comes live
        blank = late.wait_for(f"{BASE}/snapshot", lambda p, retain: p != face, timeout=3)
        late.close()
        later = Listener(broker.port)  # and it is what the broker keeps for Home Assistant
        retained = later.wait_for(f"{BASE}/snapshot", lambda p, retain: retain and p == blank, timeout=3)
        later.close()
    finally:
        assert stop(process) == 0, (tmp_path / "stderr.log").read_text()
        listener.close()
    image = cv2.imdecode(np.frombuffer(retained, np.uint8), cv2.IMREAD_COLOR)
    assert image is not None and image.max() < 16  # blank: no face left in Home Assistant


def test_no_event_before_home_assistant_says_online(broker, demo_clip, tmp_path):
    listener = Listener(broker.port)
    process = start_run(mqtt_config(tmp_path, broker.port, birth_grace_s=60.0), demo_clip, tmp_path / "stderr.log")
    try:
        listener.wait_for(f"{BASE}/state", lambda p, retain: json.loads(p)["faces"] > 0)  # a face is there
        time.sleep(3.0)
        assert f"{BASE}/event" not in listener.topics()
        listener.publish("homeassistant/status", "online")
        start = json.loads(listener.wait_for(f"{BASE}/event", timeout=10))
        assert start["event_type"] == "start" and start["label"]
    finally:
        assert stop(process) == 0, (tmp_path / "stderr.log").read_text()
        listener.close()


def test_two_devices_with_one_id_warn_instead_of_kicking_each_other_off(broker, demo_clip, tmp_path):
    first_dir, second_dir = tmp_path / "a", tmp_path / "b"
    first_dir.mkdir()
    second_dir.mkdir()
    listener = Listener(broker.port)
    first = start_run(mqtt_config(first_dir, broker.port), demo_clip, first_dir / "stderr.log")
    second = None
    try:
        listener.wait_for(f"{BASE}/availability", lambda p, retain: p == b"online")
        second = start_run(mqtt_config(second_dir, broker.port), demo_clip, second_dir / "stderr.log")
        deadline = time.monotonic() + 20
        logs = ["", ""]
        while time.monotonic() < deadline and not all("another device publishes as" in text for text in logs):
            time.sleep(0.5)
            logs = [(folder / "stderr.log").read_text() for folder in (first_dir, second_dir)]
        time.sleep(2.0)
        logs = [(folder / "stderr.log").read_text() for folder in (first_dir, second_dir)]
    finally:
        for process in (first, second):
            if process is not None:
                stop(process)
        listener.close()
    for text in logs:
        assert text.count(f"another device publishes as {BASE} too") == 1, text
        assert "connection lost" not in text, text  # no storm: each has its own client id
    assert DEVICE in BASE
