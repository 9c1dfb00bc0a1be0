"""The Home Assistant policies on their own: calm events, one snapshot per burst, a held presence, the discovery
gate, ids that never collide, and what discovery and state say (tests/test_mqtt_calm.py: against mosquitto)."""

from __future__ import annotations

import numpy as np

from fer_edge.serve.homeassistant import (
    BirthResend,
    DiscoveryGate,
    EventPolicy,
    EventTimes,
    PresenceHold,
    SnapshotPolicy,
    Topics,
    default_device_id,
    discovery_payload,
    live_view_url,
    state_payload,
)
from fer_edge.serve.live import TrackEvent
from fer_edge.types import Box, Face, Prediction

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


def test_events_go_on_after_the_clock_is_set_back():
    """The policy runs on wall time: set back an hour, its waits must not last the hour."""
    policy = EventPolicy(EventTimes(min_track_s=1.0, change_hold_s=1.0, cooldown_s=2.0))
    policy.add(raw("start", 1, "happy", 3600.0))
    assert [e.kind for e in drain(policy, 3600.0, 3602.0)] == ["start"]
    policy.add(raw("change", 1, "sad", 3.0))  # an hour earlier by the clock, a second later in fact
    policy.add(raw("start", 2, "happy", 3.0))
    sent = drain(policy, 3.0, 10.0)
    assert [(e.kind, e.track, e.label) for e in sent] == [("change", 1, "sad"), ("start", 2, "happy")]
    assert sent[0].t <= 6.0


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


def test_births_in_a_burst_give_one_resend_per_interval_and_the_last_one_is_answered():
    births = BirthResend(interval_s=10.0)
    births.resending(100.0)  # connected
    assert not births.due(100.5)  # nothing asked
    births.birth()
    assert not births.due(105.0) and births.due(110.0)  # a birth soon after connecting waits for the interval
    births.resending(110.0)
    sent = [110.0]
    for tenth in range(1101, 1400):  # a birth every tenth of a second for 30 s
        now = tenth / 10
        births.birth()
        if births.due(now):
            births.resending(now)
            sent.append(now)
    assert sent == [110.0, 120.0, 130.0]
    assert not births.due(139.9) and births.due(140.0)  # the last of the burst, once its interval is over
    births.resending(140.0)
    assert not births.due(1000.0)
    births.birth()
    assert births.due(1000.0)  # after a quiet interval: at once


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
    assert cmps["fer-edge-kitchen_last_face"]["p"] == "image"  # its state is the newest image's time
    assert cmps["fer-edge-kitchen_snapshot"] == {"p": "camera"}  # the camera it replaces goes
    assert "configuration_url" not in discovery_payload(topics, "kitchen", list(LABELS), None)["dev"]
