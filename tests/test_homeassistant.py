"""What Home Assistant gets: calm events, one retained snapshot per burst, privacy at once, a held presence, ids
that never collide. The policies on their own, then fer-edge against a real mosquitto on the performer clip."""

from __future__ import annotations

import json
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from livehelpers import start_run, stop
from test_mqtt import BASE, DEVICE, DISCOVERY, Broker, Listener, mqtt_config

from fer_edge.serve.homeassistant import (
    DiscoveryGate,
    EventPolicy,
    EventTimes,
    PresenceHold,
    SnapshotPolicy,
    default_device_id,
    discovery_payload,
    live_view_url,
    state_payload,
)
from fer_edge.serve.live import TrackEvent
from fer_edge.serve.mqtt import Topics
from fer_edge.types import Box, Face, Prediction

PERFORMER = Path("/work/shared/clips/performer-640x360.mp4")
LABELS = ("happy", "sad")


def raw(kind: str, track: int, label: str | None, t: float, seq: int = 0) -> TrackEvent:
    return TrackEvent(seq, kind, track, label, 0.9 if label else None, (0, 0, 10, 10), t, int(t * 30))


def drain(policy: EventPolicy, start: float, end: float, step: float = 0.25) -> list:
    sent, now = [], start
    while now <= end:
        event = policy.due(now)
        if event is not None:
            sent.append(event)
        now += step
    return sent


def test_a_short_or_unlabelled_track_sends_nothing_and_a_start_waits_for_its_label():
    policy = EventPolicy(EventTimes(min_track_s=1.0, change_hold_s=1.0, cooldown_s=0.0))
    policy.add(raw("start", 1, "happy", 0.0))
    policy.add(raw("end", 1, "happy", 0.6))  # gone before it counted
    policy.add(raw("start", 2, None, 1.0))
    assert drain(policy, 0.0, 2.5) == []  # no label yet: no start
    policy.add(raw("change", 2, "sad", 2.6))
    [start] = drain(policy, 2.6, 3.0)
    assert (start.kind, start.track, start.label) == ("start", 2, "sad")


def test_a_flickering_label_sends_no_change_and_a_held_one_does():
    policy = EventPolicy(EventTimes(min_track_s=0.0, change_hold_s=1.0, cooldown_s=0.0))
    policy.add(raw("start", 1, "happy", 0.0))
    assert policy.due(0.0).kind == "start"
    for i, t in enumerate(np.arange(0.2, 3.0, 0.4)):  # sad, happy, sad, ... 0.4 s each
        policy.add(raw("change", 1, "sad" if i % 2 == 0 else "happy", float(t)))
        assert policy.due(float(t) + 0.1) is None
    policy.add(raw("change", 1, "sad", 3.0))
    assert policy.due(3.5) is None
    change = policy.due(4.0)
    assert (change.kind, change.label) == ("change", "sad")
    policy.add(raw("end", 1, "sad", 5.0))
    assert policy.due(5.0).kind == "end"
    assert policy.seen == 10 and policy.sent == 3  # the counter-metric: what came in, what went out


def test_three_tracks_on_one_frame_come_out_a_cooldown_apart_each_a_distinct_moment():
    policy = EventPolicy(EventTimes(min_track_s=0.5, change_hold_s=0.5, cooldown_s=2.0))
    for track in (1, 2, 3):
        policy.add(raw("start", track, "happy", 10.0))
    sent = drain(policy, 10.0, 20.0)
    assert [(e.kind, e.track) for e in sent] == [("start", 1), ("start", 2), ("start", 3)]
    times = [e.t for e in sent]
    assert all(later - earlier >= 2.0 for earlier, later in zip(times, times[1:]))
    assert len({e.seq for e in sent}) == 3


def test_one_snapshot_per_burst_and_never_the_same_jpeg_twice():
    policy = SnapshotPolicy(interval_s=10.0)
    a, b = b"\xff\xd8a", b"\xff\xd8b"
    assert policy.accept(a, 0.0)
    assert not policy.accept(b, 0.0) and not policy.accept(b, 9.9)  # the rest of the burst
    assert not policy.accept(a, 20.0)  # the same picture again
    assert policy.accept(b, 20.0)


def test_presence_holds_through_a_missed_detection():
    hold = PresenceHold(off_delay_s=5.0)
    states = [hold.present(faces, t) for t, faces in [(0, 1), (1, 0), (2, 1), (3, 0), (6.9, 0), (7.1, 0)]]
    assert states == [True, True, True, True, True, False]


def test_events_wait_for_home_assistant_or_a_grace():
    gate = DiscoveryGate(grace_s=3.0)
    assert not gate.open(100.0)  # no discovery sent yet
    gate.discovery_sent(100.0)
    assert not gate.open(102.0) and gate.open(103.0)
    gate.disconnected()
    gate.discovery_sent(200.0)
    gate.birth()
    assert gate.open(200.1)


def test_a_default_host_name_takes_the_machine_id(tmp_path, caplog):
    machine_id = tmp_path / "machine-id"
    machine_id.write_text("5f1c0b9d2e7a4c1e9b3d0a8f6e2c4b7a\n")
    assert default_device_id("kitchen.local", (machine_id,)).value == "kitchen"
    device = default_device_id("raspberrypi", (machine_id,))
    assert device.value == "raspberrypi-5f1c0b9d" and str(machine_id) in device.why
    assert default_device_id("raspberrypi", (tmp_path / "missing",)).value == "raspberrypi"


def test_expression_comes_from_the_largest_labelled_face():
    big_unlabelled = Face(Box(0, 0, 200, 200), None, 1)
    small_happy = Face(Box(300, 0, 60, 60), Prediction(LABELS, (0.9, 0.1)), 2)
    state = state_payload([big_unlabelled, small_happy], present=True)
    assert state["expression"] == "happy" and state["faces"] == 2 and state["present"] == "ON"
    assert state_payload([], present=True)["present"] == "ON"  # held after the face left
    assert state_payload([], present=False) == {"expression": "none", "score": None, "faces": 0, "present": "OFF"}


def test_discovery_links_the_live_view_and_says_what_is_being_written():
    topics = Topics("fer-edge", "kitchen", "homeassistant")
    url = live_view_url("0.0.0.0:8080", hostname="kitchen")
    assert url == "http://kitchen:8080/" and live_view_url("[::1]:9000") == "http://[::1]:9000/"
    discovery = discovery_payload(topics, "kitchen", list(LABELS), None, url)
    cmps = discovery["cmps"]
    assert discovery["dev"]["configuration_url"] == url
    assert cmps["fer-edge-kitchen_disk_free"]["unit_of_measurement"] == "MiB"
    recording = cmps["fer-edge-kitchen_recording_active"]
    assert recording["p"] == "binary_sensor" and recording["state_topic"] == "fer-edge/kitchen/recording/active"
    assert cmps["fer-edge-kitchen_snapshot"]["p"] == "image"  # its state is the newest image's time
    assert "configuration_url" not in discovery_payload(topics, "kitchen", list(LABELS), None)["dev"]


# --- against mosquitto ----------------------------------------------------------------------------------------


@pytest.fixture
def broker(tmp_path):
    broker = Broker(tmp_path).start()
    yield broker
    broker.stop()


def _performer() -> Path:
    if not PERFORMER.exists():
        pytest.skip(f"{PERFORMER} missing (see /work/shared/clips/README.md)")
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
    late = Listener(broker.port)  # Home Assistant restarted: the camera still has the last face
    assert late.wait_for(f"{BASE}/snapshot", lambda p, retain: retain) == snapshots[-1][0]
    late.close()


def test_privacy_on_replaces_the_retained_snapshot_at_once(broker, demo_clip, tmp_path):
    listener = Listener(broker.port)
    process = start_run(mqtt_config(tmp_path, broker.port, birth_grace_s=0.0), demo_clip, tmp_path / "stderr.log")
    try:
        face = listener.wait_for(f"{BASE}/snapshot")
        listener.publish(f"{BASE}/privacy/set", "ON")
        listener.wait_for(f"{BASE}/privacy/state", lambda p, retain: p == b"ON")
        late = Listener(broker.port)
        retained = late.wait_for(f"{BASE}/snapshot", lambda p, retain: retain and p != face, timeout=3)
        late.close()
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
