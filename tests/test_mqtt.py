"""MQTT against a real mosquitto on 127.0.0.1: Home Assistant discovery, availability (also after kill -9), state,
events with a snapshot, switches, and a broker that is down at start."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from livehelpers import free_port, need_binary, start_run, stop, wait_for_port, write_config

mqtt = pytest.importorskip("paho.mqtt.client", reason="paho-mqtt missing: pip install -r requirements-edge.txt")

DEVICE = "testcam"
BASE = f"fer-edge/{DEVICE}"
DISCOVERY = f"homeassistant/device/fer-edge-{DEVICE}/config"


class Broker:
    """mosquitto on a free port of 127.0.0.1, from a temporary config, no persistence."""

    def __init__(self, folder, port: int | None = None):
        self.binary = need_binary("mosquitto")
        self.port = port or free_port()
        self.config = folder / f"mosquitto-{self.port}.conf"
        self.config.write_text(f"listener {self.port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.process: subprocess.Popen | None = None

    def start(self) -> Broker:
        self.process = subprocess.Popen(
            [self.binary, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process, timeout=5)


class Listener:
    """A paho client subscribed to everything; keeps every message in order of arrival."""

    def __init__(self, port: int):
        self.seen: list[tuple[str, bytes, bool]] = []
        self._arrived = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        subscribed = threading.Event()
        self.client.on_subscribe = lambda *args: subscribed.set()
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.client.subscribe([("fer-edge/#", 1), ("homeassistant/#", 1), ("ha/#", 1)])  # ha: a prefix of its own
        assert subscribed.wait(5)

    def _on_message(self, client, userdata, message) -> None:
        with self._arrived:
            self.seen.append((message.topic, message.payload, message.retain))
            self._arrived.notify_all()

    def mark(self) -> int:
        with self._arrived:
            return len(self.seen)

    def topics(self, after: int = 0) -> list[str]:
        with self._arrived:
            return [topic for topic, _, _ in self.seen[after:]]

    def wait_for(self, topic: str, check=lambda payload, retain: True, timeout: float = 20.0, after: int = 0):
        """The first message on ``topic`` since message number ``after`` that passes ``check``."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while True:
                for got, payload, retain in self.seen[after:]:
                    if got == topic and check(payload, retain):
                        return payload
                after = max(after, len(self.seen))
                if not self._arrived.wait(timeout=max(0.0, deadline - time.monotonic())):
                    raise AssertionError(f"no matching message on {topic} within {timeout} s")

    def publish(self, topic: str, payload: str | bytes, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mqtt_config(folder, port: int, **mqtt_options):
    return write_config(
        folder / f"config-{port}.yaml",
        {
            "source": {"realtime": True, "loop": True},
            "recording": {"output_dir": str(folder / "out"), "segment_seconds": 2.0},
            "logging": {"status_interval_s": 1.0},
            "mqtt": {
                "enabled": True,
                "host": "127.0.0.1",
                "port": port,
                "device_id": DEVICE,
                "keepalive_s": 2,
                "state_interval_s": 0.5,
                "diagnostics_interval_s": 1.0,
                **mqtt_options,
            },
        },
    )


@pytest.fixture
def broker(tmp_path):
    broker = Broker(tmp_path).start()
    yield broker
    broker.stop()


def test_discovery_state_events_switches_and_offline_after_kill_9(broker, demo_clip, tmp_path):
    listener = Listener(broker.port)
    process = start_run(mqtt_config(tmp_path, broker.port), demo_clip, tmp_path / "stderr.log")
    try:
        discovery = json.loads(listener.wait_for(DISCOVERY, lambda p, retain: True))
        assert discovery["dev"]["identifiers"] == [f"fer-edge-{DEVICE}"] and discovery["o"]["name"] == "fer-edge"
        platforms = {key.removeprefix(f"fer-edge-{DEVICE}_"): c["p"] for key, c in discovery["cmps"].items()}
        assert platforms == {
            "expression": "sensor",
            "faces": "sensor",
            "face_present": "binary_sensor",
            "face_event": "event",
            "snapshot": "camera",  # only its platform: the camera that "last_face" replaces is removed
            "last_face": "image",
            "recording_active": "binary_sensor",
            "recording": "switch",
            "privacy": "switch",
            "fps": "sensor",
            "disk_free": "sensor",
        }
        components = {key.removeprefix(f"fer-edge-{DEVICE}_"): c for key, c in discovery["cmps"].items()}
        assert components["expression"]["device_class"] == "enum"
        assert components["expression"]["options"] == [
            "angry",
            "disgust",
            "fear",
            "happy",
            "neutral",
            "sad",
            "surprise",
            "none",
        ]
        assert components["face_present"]["device_class"] == "occupancy"
        assert components["fps"]["entity_category"] == "diagnostic"
        assert components.pop("snapshot") == {"p": "camera"}
        assert all(c["availability_topic"] == f"{BASE}/availability" for c in components.values())
        assert len({c["unique_id"] for c in components.values()}) == len(components)
        listener.wait_for(f"{BASE}/availability", lambda p, retain: p == b"online")

        # The demo's face appears about 1 s in: an event, its snapshot, and the state with it.
        start = json.loads(listener.wait_for(f"{BASE}/event", lambda p, r: json.loads(p)["event_type"] == "start"))
        assert start["label"] in components["expression"]["options"] and start["track"] >= 1
        snapshot = listener.wait_for(f"{BASE}/snapshot")
        assert snapshot[:3] == b"\xff\xd8\xff"
        state = json.loads(listener.wait_for(f"{BASE}/state", lambda p, r: json.loads(p)["faces"] > 0))
        assert state["present"] == "ON" and state["expression"] in components["expression"]["options"]
        diagnostics = json.loads(listener.wait_for(f"{BASE}/diagnostics"))
        assert diagnostics["disk_free_mib"] > 0
        assert listener.wait_for(f"{BASE}/recording/active") == b"ON"  # a segment is being written
        listener.publish(f"{BASE}/privacy/set", "ON")
        listener.wait_for(f"{BASE}/privacy/state", lambda p, retain: p == b"ON")
        listener.publish(f"{BASE}/recording/set", "OFF")
        listener.wait_for(f"{BASE}/recording/state", lambda p, retain: p == b"OFF")
        # Home Assistant restarted: the discovery message comes again.
        mark = listener.mark()
        listener.publish("homeassistant/status", "online")
        listener.wait_for(DISCOVERY, after=mark)

        mark = listener.mark()
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        killed = time.monotonic()
        listener.wait_for(f"{BASE}/availability", lambda p, retain: p == b"offline", timeout=10, after=mark)
        assert time.monotonic() - killed < 6  # keepalive 2 s: the broker gives up after 3 s
    finally:
        stop(process)
        listener.close()
    # The broker keeps what a new Home Assistant would see: the device, and that it is offline.
    late = Listener(broker.port)
    assert json.loads(late.wait_for(DISCOVERY, lambda p, retain: retain))["cmps"]
    late.wait_for(f"{BASE}/availability", lambda p, retain: retain and p == b"offline")
    late.close()


def test_recording_switch_finishes_the_recording_and_privacy_stops_snapshots(broker, demo_clip, tmp_path):
    listener = Listener(broker.port)
    process = start_run(mqtt_config(tmp_path, broker.port), demo_clip, tmp_path / "stderr.log")
    out = tmp_path / "out"
    try:
        listener.wait_for(f"{BASE}/availability", lambda p, retain: p == b"online")
        listener.publish(f"{BASE}/privacy/set", "ON")
        listener.wait_for(f"{BASE}/privacy/state", lambda p, retain: p == b"ON")
        mark = listener.mark()
        blank = listener.wait_for(f"{BASE}/snapshot")  # a blank one replaces any face at once
        listener.wait_for(f"{BASE}/event", lambda p, r: json.loads(p)["event_type"] == "start", after=mark)
        time.sleep(0.5)
        assert {p for t, p, _ in listener.seen[mark:] if t == f"{BASE}/snapshot"} <= {blank}
        deadline = time.monotonic() + 20
        while not list(out.glob("*.part")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(out.glob("*.part"))
        listener.publish(f"{BASE}/recording/set", "OFF")
        listener.wait_for(f"{BASE}/recording/state", lambda p, retain: p == b"OFF")
        deadline = time.monotonic() + 5
        while list(out.glob("*.part")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not list(out.glob("*.part"))  # the open segment was finished
        finished = sorted(out.glob("*.mp4"))
        time.sleep(2.5)
        assert sorted(out.glob("*.mp4")) == finished and not list(out.glob("*.part"))  # nothing new while off
        listener.publish(f"{BASE}/recording/set", "ON")
        deadline = time.monotonic() + 10
        while not list(out.glob("*.part")) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert list(out.glob("*.part"))  # a new recording
    finally:
        assert stop(process) == 0, (tmp_path / "stderr.log").read_text()
        listener.close()
    late = Listener(broker.port)
    late.wait_for(f"{BASE}/availability", lambda p, retain: retain and p == b"offline")  # a clean stop says so
    late.close()


def test_a_broker_down_at_start_never_stops_the_loop_and_is_reached_later(demo_clip, tmp_path):
    port = free_port()
    with tempfile.TemporaryDirectory(dir="/tmp") as short:  # a unix socket path must stay short
        notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        notify.bind(f"{short}/notify")
        notify.settimeout(15)
        broker = Broker(tmp_path, port)  # before the run: where mosquitto is missing this skips, leaving nothing
        process = start_run(
            mqtt_config(tmp_path, port), demo_clip, tmp_path / "stderr.log", env={"NOTIFY_SOCKET": f"{short}/notify"}
        )
        try:
            status = ""
            while "fps, frames" not in status:  # systemctl status: frames flow, and the broker is missing
                status = notify.recv(4096).decode()
            assert f"; mqtt 127.0.0.1:{port}: " in status and "unreachable" in status, status
            assert status.endswith(", retrying"), status
            log = tmp_path / "stderr.log"
            assert process.poll() is None
            assert log.read_text().count(f"mqtt: 127.0.0.1:{port}: broker unreachable") == 1  # once per outage
            broker.start()
            listener = Listener(port)
            listener.wait_for(f"{BASE}/availability", lambda p, retain: p == b"online", timeout=15)
            listener.close()
            assert f"mqtt: connected to 127.0.0.1:{port}" in log.read_text()
            statuses = []  # one a second (older ones may still be queued), between WATCHDOG=1 pings
            while len(statuses) < 4 and (not statuses or "mqtt" in statuses[-1]):
                message = notify.recv(4096).decode()
                if "fps, frames" in message:
                    statuses.append(message)
            assert "mqtt" not in statuses[-1], statuses
        finally:
            assert stop(process) == 0, (tmp_path / "stderr.log").read_text()
            broker.stop()
            notify.close()


def test_track_changes_start_change_and_end():
    import numpy as np

    from fer_edge.serve.live import LiveFeed
    from fer_edge.types import Box, Face, Frame, Prediction

    labels = ("happy", "sad")

    def face(track: int, label: str) -> Face:
        return Face(Box(10, 10, 50, 50), Prediction(labels, (0.9, 0.1) if label == "happy" else (0.2, 0.8)), track)

    feed = LiveFeed(end_after_s=1.0)
    image = np.zeros((4, 4, 3), np.uint8)
    for index, (t, faces) in enumerate(
        [
            (0.0, []),
            (0.1, [face(1, "happy")]),
            (0.2, [face(1, "happy")]),
            (0.3, [face(1, "sad"), face(2, "happy")]),
            (0.9, [face(2, "happy")]),
            (1.5, [face(2, "happy")]),
            (2.0, []),
        ]
    ):
        feed.write(Frame(image, index, t), faces)
    kinds = [(e.kind, e.track, e.label) for e in feed.events_since(0)]
    assert kinds == [("start", 1, "happy"), ("change", 1, "sad"), ("start", 2, "happy"), ("end", 1, "sad")]
    feed.write(Frame(image, 7, 3.5), [])  # 1.5 s after track 2 was last seen
    assert [(e.kind, e.track) for e in feed.events_since(4)] == [("end", 2)]


def _peak_rss_mb(pid: int) -> int:
    status = dict(line.split(":", 1) for line in open(f"/proc/{pid}/status").read().splitlines())
    return int(status["VmHWM"].split()[0]) // 1024


def test_a_retained_off_does_not_override_the_config_at_start(broker, demo_clip, tmp_path):
    listener = Listener(broker.port)
    listener.publish(f"{BASE}/recording/set", "OFF", retain=True)  # left behind by an old Home Assistant
    process = start_run(mqtt_config(tmp_path, broker.port), demo_clip, tmp_path / "stderr.log")
    try:
        listener.wait_for(f"{BASE}/availability", lambda p, retain: p == b"online")
        time.sleep(2.5)  # the retained OFF arrived 40 ms in
        assert listener.wait_for(f"{BASE}/recording/state", timeout=5) == b"ON"
        assert f"{BASE}/recording/state" not in [t for t, p, _ in listener.seen if p == b"OFF"]
        assert list((tmp_path / "out").glob("*.mp4"))  # recording went on: finished 2 s segments
        assert "ignored a retained command" in (tmp_path / "stderr.log").read_text()
    finally:
        assert stop(process) == 0, (tmp_path / "stderr.log").read_text()
        listener.close()


def test_huge_and_garbage_commands_cost_little_and_log_little(broker, demo_clip, tmp_path):
    listener = Listener(broker.port)
    process = start_run(mqtt_config(tmp_path, broker.port), demo_clip, tmp_path / "stderr.log")
    log = tmp_path / "stderr.log"
    try:
        listener.wait_for(f"{BASE}/availability", lambda p, retain: p == b"online")
        time.sleep(1.0)
        listener.client.publish(f"{BASE}/recording/set", b"OFF" + b" " * 20_000_000, qos=1).wait_for_publish(30)
        for number in range(5000):
            listener.client.publish(f"{BASE}/privacy/set", f"MAYBE {number}", qos=0)
        listener.publish(f"{BASE}/privacy/set", "ON")  # after all that, a real command still works
        listener.wait_for(f"{BASE}/privacy/state", lambda p, retain: p == b"ON", timeout=30)
        peak = _peak_rss_mb(process.pid)
        assert peak < 250, f"peak RSS {peak} MB"
        assert listener.wait_for(f"{BASE}/recording/state", timeout=5) == b"ON"  # the 20 MB OFF was no command
        warnings = [line for line in log.read_text().splitlines() if "WARNING" in line and "mqtt" in line]
        assert len(warnings) <= 3, warnings
    finally:
        assert stop(process) == 0, log.read_text()
        listener.close()


class HostileBroker:
    """Enough of an MQTT 5 broker to accept one client, then send what a test says (no real broker sends a
    topic that is not UTF-8); collects the topics and payloads the client publishes."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.published: list[tuple[bytes, bytes]] = []
        self.ready = threading.Event()
        self.conn: socket.socket | None = None
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _read_packet(self, conn: socket.socket) -> tuple[int, bytes]:
        head = conn.recv(1)
        if not head:
            raise ConnectionError
        length, shift = 0, 0
        while True:
            byte = conn.recv(1)[0]
            length |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                break
        body = b""
        while len(body) < length:
            body += conn.recv(length - len(body))
        return head[0], body

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        self.conn = conn
        try:
            while True:
                kind, body = self._read_packet(conn)
                if kind >> 4 == 1:  # CONNECT
                    conn.sendall(b"\x20\x03\x00\x00\x00")  # MQTT 5 CONNACK: no properties
                elif kind >> 4 == 8:  # SUBSCRIBE: grant QoS 1 to each filter
                    count = body[2:].count(b"\x01")
                    conn.sendall(bytes([0x90, 3 + count]) + body[:2] + b"\x00" + b"\x01" * count)
                    self.ready.set()
                elif kind >> 4 == 3:  # PUBLISH
                    size = int.from_bytes(body[:2], "big")
                    topic, rest = body[2 : 2 + size], body[2 + size :]
                    if (kind >> 1) & 3:
                        conn.sendall(b"\x40\x02" + rest[:2])
                        rest = rest[2:]
                    rest = rest[1 + rest[0] :]  # MQTT 5: the properties (short here), then the payload
                    self.published.append((topic, rest))
                elif kind >> 4 == 12:  # PINGREQ
                    conn.sendall(b"\xd0\x00")
        except (OSError, IndexError):
            pass

    def send_publish(self, topic: bytes, payload: bytes) -> None:
        body = len(topic).to_bytes(2, "big") + topic + b"\x00" + payload  # no properties
        assert self.conn is not None and len(body) < 128
        self.conn.sendall(bytes([0x30, len(body)]) + body)

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.server.close()


class AcknowledgementLosingBroker(HostileBroker):
    """Enough of an MQTT 5 broker for one client at a time, which loses the connection instead of acknowledging the
    first message on ``lose_on``, as a Wi-Fi drop between a PUBLISH and its PUBACK does; collects the messages on
    ``lose_on``, with their DUP flag, in order of arrival over every connection."""

    def __init__(self, lose_on: bytes) -> None:
        self.lose_on = lose_on
        self.arrived: list[tuple[bytes, bool]] = []  # (payload, sent again)
        self.connections = 0
        super().__init__()

    def _serve(self) -> None:
        lost = False
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.conn = conn
            self.connections += 1
            try:
                while True:
                    kind, body = self._read_packet(conn)
                    if kind >> 4 == 1:  # CONNECT
                        conn.sendall(b"\x20\x03\x00\x00\x00")
                    elif kind >> 4 == 8:  # SUBSCRIBE: grant QoS 1 to each filter
                        count = body[2:].count(b"\x01")
                        conn.sendall(bytes([0x90, 3 + count]) + body[:2] + b"\x00" + b"\x01" * count)
                        self.ready.set()
                    elif kind >> 4 == 3:  # PUBLISH, at QoS 1 here
                        size = int.from_bytes(body[:2], "big")
                        topic, packet_id, rest = body[2 : 2 + size], body[2 + size : 4 + size], body[4 + size :]
                        if topic == self.lose_on:
                            self.arrived.append((rest[1 + rest[0] :], bool(kind & 0x08)))
                            if not lost:
                                lost = True
                                conn.close()
                                break
                        conn.sendall(b"\x40\x02" + packet_id)
                    elif kind >> 4 == 12:  # PINGREQ
                        conn.sendall(b"\xd0\x00")
            except (OSError, IndexError):
                pass


def test_an_event_sent_again_after_a_lost_acknowledgement_has_the_id_it_had(tmp_path):
    """Events go at QoS 1: one whose PUBACK a disconnect lost comes again after the reconnect, and Home
    Assistant's automations ran twice with nothing to tell the copy from a new event (``seq`` starts again at 1
    with each run of the service, so it cannot tell either)."""
    import numpy as np

    from fer_edge.types import Box, Face, Frame, Prediction

    broker = AcknowledgementLosingBroker(f"{BASE}/event".encode())
    quick = {"event_min_track_s": 0.0, "event_change_hold_s": 0.0, "event_cooldown_s": 0.0, "birth_grace_s": 0.0}
    image = np.zeros((90, 160, 3), np.uint8)

    def face(label: str) -> Face:
        scores = (0.9, 0.1) if label == "happy" else (0.1, 0.9)
        return Face(Box(10, 10, 40, 40), Prediction(("happy", "sad"), scores), 1)

    def show(publisher, frame: Frame, faces: list[Face], messages: int) -> None:
        """``frame`` to the feed; returns once ``messages`` more events have come to the broker."""
        expected = len(broker.arrived) + messages
        publisher.feed.write(frame, faces)
        deadline = time.monotonic() + 15
        while len(broker.arrived) < expected:
            assert time.monotonic() < deadline, [(json.loads(p)["event_id"], dup) for p, dup in broker.arrived]
            time.sleep(0.05)

    try:
        for run in range(2):
            publisher = _publisher(broker.port, snapshot=False, **quick)
            try:
                assert broker.ready.wait(10)
                show(publisher, Frame(image, 0, 0.0), [face("happy")], 2 if run == 0 else 1)  # start; lost at first
                show(publisher, Frame(image, 1, 0.1), [face("sad")], 1)  # change
                show(publisher, Frame(image, 2, 5.0), [], 1)  # end
            finally:
                publisher.close()
            broker.ready.clear()
    finally:
        broker.close()
    (lost, lost_dup), (again, again_dup), *rest = broker.arrived
    assert broker.connections == 3  # the first run reconnected once
    assert again_dup and not lost_dup
    assert again == lost  # the same message: the same event_id
    events = [json.loads(payload) for payload, _ in [(lost, False), *rest]]
    assert [e["event_type"] for e in events] == ["start", "change", "end", "start", "change", "end"]
    assert [e["seq"] for e in events] == [1, 2, 3, 1, 2, 3]  # each run counts from 1
    assert len({e["event_id"] for e in events}) == 6  # the id still tells them apart
    assert not any(dup for _, dup in rest)


def test_a_topic_that_is_not_utf8_does_not_end_the_client(demo_clip, tmp_path):
    hostile = HostileBroker()
    process = start_run(mqtt_config(tmp_path, hostile.port), demo_clip, tmp_path / "stderr.log")
    try:
        assert hostile.ready.wait(30)
        time.sleep(0.5)
        hostile.send_publish(f"{BASE}/".encode() + b"\xff\xfe/set", b"ON")
        time.sleep(0.5)
        hostile.send_publish(f"{BASE}/recording/set".encode(), b"OFF")  # heard only by a client still running
        deadline = time.monotonic() + 10
        while (f"{BASE}/recording/state".encode(), b"OFF") not in hostile.published and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (f"{BASE}/recording/state".encode(), b"OFF") in hostile.published
        assert "topic is not UTF-8" in (tmp_path / "stderr.log").read_text()
    finally:
        assert stop(process) == 0, (tmp_path / "stderr.log").read_text()
        hostile.close()


def _certificate(folder, name: str, *, issuer: tuple | None = None) -> tuple:
    """(certificate, key) files: a self-signed CA when ``issuer`` is None, else a 127.0.0.1 server cert by it."""
    key, cert = folder / f"{name}.key", folder / f"{name}.crt"
    openssl = need_binary("openssl")
    subprocess.run([openssl, "genrsa", "-out", str(key), "2048"], check=True, capture_output=True)
    if issuer is None:
        args = ["req", "-x509", "-new", "-key", str(key), "-subj", f"/CN={name}", "-days", "2", "-out", str(cert)]
        subprocess.run([openssl, *args], check=True, capture_output=True)
    else:
        csr = folder / f"{name}.csr"
        subprocess.run(
            [openssl, "req", "-new", "-key", str(key), "-subj", "/CN=127.0.0.1", "-out", str(csr)],
            check=True,
            capture_output=True,
        )
        subprocess.run(
            [openssl, "x509", "-req", "-in", str(csr), "-CA", str(issuer[0]), "-CAkey", str(issuer[1])]
            + ["-CAcreateserial", "-days", "2", "-out", str(cert)],
            check=True,
            capture_output=True,
        )
    return cert, key


def test_a_tls_failure_is_logged_as_one_and_says_why(demo_clip, tmp_path):
    ca = _certificate(tmp_path, "ca")
    other_ca = _certificate(tmp_path, "other-ca")
    server = _certificate(tmp_path, "server", issuer=ca)
    broker = Broker(tmp_path)
    broker.config.write_text(
        f"listener {broker.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"cafile {ca[0]}\ncertfile {server[0]}\nkeyfile {server[1]}\n"
        + ("user root\n" if os.geteuid() == 0 else "")  # else it drops to a user who cannot read them
    )
    broker.start()
    config = mqtt_config(tmp_path, broker.port, tls=True, tls_ca_file=str(other_ca[0]))
    process = start_run(config, demo_clip, tmp_path / "stderr.log")
    log = tmp_path / "stderr.log"
    try:
        deadline = time.monotonic() + 20
        while "mqtt: 127.0.0.1" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        text = log.read_text()
        assert f"mqtt: 127.0.0.1:{broker.port}: TLS handshake failed: CERTIFICATE_VERIFY_FAILED" in text, text
        assert "broker unreachable" not in text
    finally:
        assert stop(process) == 0, log.read_text()
        broker.stop()


def test_a_stop_does_not_wait_for_a_dns_lookup_of_the_broker(monkeypatch):
    """SIGTERM waited 9.3 s for the broker's name against a DNS server that never answers."""
    from fer_edge.config.device import MqttConfig
    from fer_edge.serve.live import LiveFeed
    from fer_edge.serve.mqtt import MqttPublisher
    from fer_edge.serve.switches import Switches

    answer = threading.Event()
    asked = threading.Event()
    real = socket.getaddrinfo

    def silent_dns(host, *args, **kwargs):
        if host == "broker.example":
            asked.set()
            answer.wait(60)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", silent_dns)
    feed = LiveFeed()
    publisher = MqttPublisher(
        feed, Switches(), MqttConfig(enabled=True, host="broker.example"), password=None, labels=[]
    )
    publisher.start()
    try:
        assert asked.wait(10)
        closing = threading.Thread(target=publisher.close, daemon=True)
        closing.start()
        closing.join(10)
        assert not closing.is_alive()
    finally:
        answer.set()


def _publisher(port: int, switches=None, **options):
    """A publisher in this process, on an empty feed, for what needs no frames."""
    from fer_edge.config.device import MqttConfig
    from fer_edge.serve.live import LiveFeed
    from fer_edge.serve.mqtt import MqttPublisher
    from fer_edge.serve.switches import Switches

    cfg = MqttConfig(enabled=True, host="127.0.0.1", port=port, device_id=DEVICE, keepalive_s=2, **options)
    return MqttPublisher(LiveFeed(), switches or Switches(), cfg, password=None, labels=["happy", "sad"]).start()


def test_a_message_larger_than_the_broker_takes_is_not_sent_again_and_again(tmp_path, caplog):
    """A broker with a max_packet_size below the discovery message dropped the connection on it, and paho sent it
    again after each reconnect: a reconnect a second for ever, and nothing after it ever arrived."""
    from fer_edge.serve.switches import Switches

    broker = Broker(tmp_path)
    broker.config.write_text(
        f"listener {broker.port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_packet_size 2000\n"
    )
    broker.start()
    listener = Listener(broker.port)
    publisher = _publisher(broker.port, Switches(privacy=True))  # privacy: a blank snapshot, too large as well
    try:
        listener.wait_for(f"{BASE}/availability", lambda p, retain: p == b"online", timeout=10)
        listener.wait_for(f"{BASE}/privacy/state", lambda p, retain: p == b"ON", timeout=10)
        assert publisher.stats()["disconnects"] == 0
        assert f"{DISCOVERY}: not sent: " in caplog.text and "more than the broker takes (2000)" in caplog.text
    finally:
        publisher.close()
        listener.close()
        broker.stop()


def test_a_late_last_will_does_not_leave_a_running_device_offline(broker):
    """After a power cut the Pi was back before the broker gave up on its old connection: that connection's last
    will came after the new one said online, and Home Assistant showed the running device unavailable until the
    next reconnect, maybe days later."""
    listener = Listener(broker.port)
    publisher = _publisher(broker.port)
    try:
        listener.wait_for(f"{BASE}/availability", lambda p, retain: p == b"online", timeout=10)
        mark = listener.mark()
        listener.publish(f"{BASE}/availability", "offline", retain=True)  # what the broker sends for the old one
        listener.wait_for(f"{BASE}/availability", lambda p, retain: p == b"online", after=mark, timeout=10)
    finally:
        publisher.close()
        listener.close()


def test_a_packet_larger_than_the_client_takes_is_not_read(tmp_path, caplog):
    """A broker that ignores the maximum packet size this client announces could send a PUBLISH of up to 256 MB,
    and paho read all of it into memory: a Pi with 512 MB has no room for that."""
    hostile = HostileBroker()
    publisher = _publisher(hostile.port)
    try:
        assert hostile.ready.wait(10)
        assert hostile.conn is not None
        claimed = 32 * 1024 * 1024
        header = bytes([0x30]) + bytes([(claimed >> (7 * i)) & 0x7F | (0x80 if i < 3 else 0) for i in range(4)])
        with pytest.raises(OSError):  # the client stopped reading and closed the connection
            hostile.conn.sendall(header + bytes(claimed))
        assert "more than the 65536 this client takes" in caplog.text
    finally:
        publisher.close()
        hostile.close()


def test_snapshots_turned_off_take_the_last_face_off_the_broker(broker):
    """With mqtt.snapshot: false the face a run before had sent stayed on the broker, retained, and Home Assistant
    kept showing it for good."""
    listener = Listener(broker.port)
    face = b"\xff\xd8\xff a face from an earlier run"
    listener.publish(f"{BASE}/snapshot", face, retain=True)
    publisher = _publisher(broker.port, snapshot=False)
    try:
        listener.wait_for(f"{BASE}/availability", lambda p, retain: p == b"online", timeout=10)
        blank = listener.wait_for(f"{BASE}/snapshot", lambda p, retain: p != face, timeout=10)
        assert blank[:3] == b"\xff\xd8\xff"
    finally:
        publisher.close()
        listener.close()


def test_a_flood_of_on_for_a_switch_the_config_turned_off_logs_one_line(broker, caplog):
    """Each ON for the recording switch of a device that records no video logged a warning: anyone allowed on the
    broker could fill the journal, past its rate limit, which then hid the warnings that matter."""
    from fer_edge.serve.switches import Switches

    listener = Listener(broker.port)
    switches = Switches(unavailable={"recording": "video recording is off in the config"})
    publisher = _publisher(broker.port, switches)
    try:
        listener.wait_for(f"{BASE}/availability", lambda p, retain: p == b"online", timeout=10)
        for _ in range(300):
            listener.client.publish(f"{BASE}/recording/set", "ON", qos=1)
        listener.publish(f"{BASE}/privacy/set", "ON")  # after all of them, in order
        listener.wait_for(f"{BASE}/privacy/state", lambda p, retain: p == b"ON", timeout=10)
        assert listener.wait_for(f"{BASE}/recording/state", timeout=5) == b"OFF"
        assert not switches["recording"]
        assert len([r for r in caplog.records if "it stays off" in r.getMessage()]) == 1
    finally:
        publisher.close()
        listener.close()


def test_retained_messages_a_full_queue_refused_are_sent_once_there_is_room(broker):
    """Everything retained goes out in one burst on connecting; with a small mqtt.queue_size, paho refused what
    came after the first messages, and the device stayed offline in Home Assistant, its switches unknown, until
    the next reconnect."""
    from fer_edge.serve.switches import Switches

    listener = Listener(broker.port)
    publisher = _publisher(broker.port, Switches(privacy=True), queue_size=1)
    try:
        listener.wait_for(f"{BASE}/availability", lambda p, retain: p == b"online", timeout=10)
        listener.wait_for(f"{BASE}/privacy/state", lambda p, retain: p == b"ON", timeout=10)
        listener.wait_for(f"{BASE}/recording/state", lambda p, retain: p == b"OFF", timeout=10)
        listener.wait_for(f"{BASE}/snapshot", timeout=10)  # the blank one privacy asks for
    finally:
        publisher.close()
        listener.close()


def test_a_qos_2_message_the_client_never_asked_for_ends_the_connection(tmp_path, caplog):
    """Every subscription asks for QoS 1, yet paho keeps each QoS 2 message a broker sends until the broker
    releases it: a broken or hostile one could send 65,535 of 64 KB each and never release them."""
    hostile = HostileBroker()
    publisher = _publisher(hostile.port)
    try:
        assert hostile.ready.wait(10)
        assert hostile.conn is not None
        topic = f"{BASE}/recording/set".encode()
        body = len(topic).to_bytes(2, "big") + topic + b"\x00\x01" + b"\x00" + b"x" * 50  # packet id 1, QoS 2
        assert len(body) < 128
        hostile.conn.sendall(bytes([0x34, len(body)]) + body)
        deadline = time.monotonic() + 10
        while publisher.stats()["disconnects"] == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.stats()["disconnects"] == 1
        assert "a QoS 2 message, which no subscription asked for" in caplog.text
    finally:
        publisher.close()
        hostile.close()


def test_a_clean_stop_leaves_offline_even_when_the_offline_message_found_no_room(broker):
    """A stop while the broker was slow to acknowledge found paho's queue full: the offline message was refused,
    the clean disconnect told the broker to forget the last will, and the stopped device stayed online."""
    listener = Listener(broker.port)
    publisher = _publisher(broker.port, queue_size=1)
    try:
        listener.wait_for(f"{BASE}/availability", lambda p, retain: p == b"online", timeout=10)
        assert broker.process is not None
        broker.process.send_signal(signal.SIGSTOP)  # a broker that reads nothing for a while
        try:
            published = publisher.stats()["published"]
            publisher.switches.set("privacy", True)  # its state, at QoS 1, fills the queue of one
            deadline = time.monotonic() + 10
            while publisher.stats()["published"] == published and time.monotonic() < deadline:
                time.sleep(0.05)
            assert publisher.stats()["published"] > published
            publisher.close()
        finally:
            broker.process.send_signal(signal.SIGCONT)
    finally:
        publisher.close()
        listener.close()
    late = Listener(broker.port)
    try:
        late.wait_for(f"{BASE}/availability", lambda p, retain: retain and p == b"offline", timeout=5)
    finally:
        late.close()


def test_a_discovery_prefix_of_its_own_still_hears_home_assistant_restart(broker, monkeypatch):
    """Home Assistant's birth topic is a setting apart from its discovery prefix, homeassistant/status unless
    changed: with only the prefix moved, a restarted Home Assistant was never sent the discovery again."""
    from fer_edge.serve import mqtt as fer_mqtt

    monkeypatch.setattr(fer_mqtt, "BIRTH_RESEND_INTERVAL_S", 1.0)
    listener = Listener(broker.port)
    publisher = _publisher(broker.port, discovery_prefix="ha")
    discovery = DISCOVERY.replace("homeassistant/", "ha/", 1)
    try:
        listener.wait_for(discovery, timeout=10)
        for birth in ("homeassistant/status", "ha/status"):
            mark = listener.mark()
            listener.publish(birth, "online")
            listener.wait_for(discovery, after=mark, timeout=10)
    finally:
        publisher.close()
        listener.close()


def test_a_stream_of_births_costs_one_discovery_per_interval_and_the_last_is_answered(broker, monkeypatch):
    """Each "online" on homeassistant/status sent the discovery and every retained message again, up to 4 times
    a second: a Home Assistant restarting in a loop, or anyone allowed to publish there, made the Pi send them
    without end."""
    from fer_edge.serve import mqtt as fer_mqtt

    interval = 2.0
    monkeypatch.setattr(fer_mqtt, "BIRTH_RESEND_INTERVAL_S", interval)
    listener = Listener(broker.port)
    publisher = _publisher(broker.port)
    try:
        listener.wait_for(DISCOVERY, timeout=10)
        mark = listener.mark()
        births, spacing = 12, 0.3
        burst_began = time.monotonic()
        for _ in range(births - 1):
            listener.publish("homeassistant/status", "online")
            time.sleep(spacing)  # slower than the publisher's poll: each one would be answered on its own
        last_birth = listener.mark()
        listener.publish("homeassistant/status", "online")
        burst = time.monotonic() - burst_began  # longer on a busy machine: more resends are fair
        listener.wait_for(DISCOVERY, after=last_birth, timeout=10)  # Home Assistant still gets it after the burst
        deadline = time.monotonic() + 10
        while publisher.stats()["births"] < births and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.stats()["births"] == births
        time.sleep(interval + 0.5)  # any resend still due has gone out
        resends = listener.topics(after=mark).count(DISCOVERY)
        assert 1 <= resends <= 2 + burst / interval, (resends, burst)
    finally:
        publisher.close()
        listener.close()


def test_the_status_line_says_the_broker_refused_the_credentials(tmp_path):
    """A wrong password read 'unreachable' in systemctl status, which sent the user after the network."""
    from fer_edge.serve.integrations import BrokerStatus

    class StatusLines:
        def __init__(self):
            self.lines = []

        def status(self, text):
            self.lines.append(text)

    broker = Broker(tmp_path)
    broker.config.write_text(f"listener {broker.port} 127.0.0.1\nallow_anonymous false\npersistence false\n")
    broker.start()
    publisher = _publisher(broker.port)
    try:
        deadline = time.monotonic() + 10
        while not publisher.outage and time.monotonic() < deadline:
            time.sleep(0.05)
        shown = StatusLines()
        BrokerStatus(shown, publisher).status("30.0 fps")
        assert shown.lines == [
            f"30.0 fps; mqtt 127.0.0.1:{broker.port}: broker refused the connection (Not authorized), retrying"
        ]
    finally:
        publisher.close()
        broker.stop()


DYNAMIC_SECURITY = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib", "/usr/local/lib")


def test_a_subscription_the_broker_refuses_is_logged_in_the_status_line_and_metrics(tmp_path, caplog):
    """A broker ACL that kept fer-edge from subscribing to a command topic went unnoticed: the switch did nothing
    in Home Assistant, and neither the journal, systemctl status nor /metrics (where alerts look) said why."""
    from fer_edge.serve.integrations import BrokerStatus
    from fer_edge.serve.live import LiveFeed
    from fer_edge.serve.web import WebServer

    plugin = next(
        (
            Path(d) / "mosquitto_dynamic_security.so"
            for d in DYNAMIC_SECURITY
            if (Path(d) / "mosquitto_dynamic_security.so").exists()
        ),
        None,
    )
    if plugin is None:
        pytest.skip("mosquitto's dynamic security plugin missing (Debian's mosquitto package ships it)")
    command = f"{BASE}/recording/set"
    acl = tmp_path / "dynamic-security.json"  # anyone may do anything but subscribe to the recording command
    acl.write_text(
        json.dumps(
            {
                "defaultACLAccess": {
                    "publishClientSend": True,
                    "publishClientReceive": True,
                    "subscribe": True,
                    "unsubscribe": True,
                },
                "clients": [],
                "groups": [{"groupname": "anonymous", "roles": [{"rolename": "no-recording-command"}]}],
                "roles": [
                    {
                        "rolename": "no-recording-command",
                        "acls": [{"acltype": "subscribeLiteral", "topic": command, "priority": 0, "allow": False}],
                    }
                ],
                "anonymousGroup": "anonymous",
            }
        )
    )
    broker = Broker(tmp_path)
    broker.config.write_text(
        f"listener {broker.port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        f"plugin {plugin}\nplugin_opt_config_file {acl}\n" + ("user root\n" if os.geteuid() == 0 else "")
        # started as root, it would read the file as the user mosquitto, who cannot reach here
    )
    broker.start()
    publisher = _publisher(broker.port)
    try:
        deadline = time.monotonic() + 10
        while not publisher.stats()["subscriptions_refused"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert publisher.stats()["subscriptions_refused"] == {command: "Not authorized"}
        assert f"the broker refused the subscription to {command} (Not authorized)" in caplog.text
        shown = []
        BrokerStatus(type("Lines", (), {"status": lambda self, text: shown.append(text)})(), publisher).status("9 fps")
        assert shown == [f"9 fps; mqtt 127.0.0.1:{broker.port}: subscription refused: {command} (Not authorized)"]
        feed = LiveFeed()
        feed.extra_stats["mqtt"] = publisher.stats
        web = WebServer(feed, host="127.0.0.1", port=0, token=None).start()
        try:
            with urllib.request.urlopen(f"{web.url}metrics", timeout=5) as response:
                metrics = response.read().decode()
        finally:
            web.close()
        assert "\nfer_edge_mqtt_subscriptions_refused 1\n" in metrics
    finally:
        publisher.close()
        broker.stop()


@pytest.mark.parametrize("kept", [True, False])
def test_a_reconnect_sends_the_snapshot_again_only_where_the_broker_lost_it(tmp_path, kept):
    """Each snapshot message updates Home Assistant's image entity and fires the automations on it: sent again at
    every reconnect (a Wi-Fi blip, the broker's add-on updated), an old face was announced as new. A broker that
    keeps its retained messages (persistence) still has it; one that lost them gets it again."""
    from fer_edge.serve.switches import Switches

    broker = Broker(tmp_path)
    store = tmp_path / "mosquitto-data"
    store.mkdir()
    persistence = f"persistence true\npersistence_location {store}/\n" if kept else "persistence false\n"
    if os.geteuid() == 0:
        persistence += "user root\n"  # started as root, it would write as the user mosquitto, who cannot reach here
    broker.config.write_text(f"listener {broker.port} 127.0.0.1\nallow_anonymous true\n{persistence}")
    broker.start()
    publisher = _publisher(broker.port, Switches(privacy=True))  # the blank snapshot stands on the topic
    listener = Listener(broker.port)
    try:
        blank = listener.wait_for(f"{BASE}/snapshot", timeout=10)
        listener.close()
        broker.stop()
        broker.start()
        listener = Listener(broker.port)
        listener.wait_for(f"{BASE}/availability", lambda p, retain: p == b"online" and not retain, timeout=15)
        deadline = time.monotonic() + 10
        while publisher._snapshot_check.is_set() or publisher._snapshot_check_at is not None:  # compared
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.5)  # what it sent has arrived
        sent_again = [p for topic, p, retain in listener.seen if topic == f"{BASE}/snapshot" and not retain]
        assert sent_again == ([] if kept else [blank])
        kept_now = [p for topic, p, retain in listener.seen if topic == f"{BASE}/snapshot" and retain]
        assert kept_now == ([blank] if kept else [])
    finally:
        publisher.close()
        listener.close()
        broker.stop()


def test_a_new_device_id_takes_the_device_announced_before_off_the_broker(broker, tmp_path, monkeypatch):
    """A renamed Pi (the device id follows the host name) announced a second device; the first stayed on the
    broker, and in Home Assistant, as a device never available again."""
    from fer_edge.config.device import MqttConfig
    from fer_edge.serve.live import LiveFeed
    from fer_edge.serve.mqtt import MqttPublisher
    from fer_edge.serve.switches import Switches

    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path))  # what systemd's StateDirectory= sets

    def run(device_id: str) -> None:
        cfg = MqttConfig(enabled=True, host="127.0.0.1", port=broker.port, device_id=device_id, keepalive_s=2)
        publisher = MqttPublisher(LiveFeed(), Switches(), cfg, password=None, labels=["happy", "sad"]).start()
        listener = Listener(broker.port)
        try:
            listener.wait_for(f"homeassistant/device/fer-edge-{device_id}/config", timeout=10)
            listener.wait_for(f"fer-edge/{device_id}/state", timeout=10)
        finally:
            publisher.close()
            listener.close()

    run("hall")
    run("kitchen")
    late = Listener(broker.port)
    try:
        late.wait_for("homeassistant/device/fer-edge-kitchen/config", lambda p, retain: retain, timeout=10)
        time.sleep(0.5)  # every retained message has come by now
        kept = {topic for topic, payload, retain in late.seen if retain and payload}
    finally:
        late.close()
    assert not [topic for topic in kept if "hall" in topic], kept
    assert "fer-edge/kitchen/availability" in kept
