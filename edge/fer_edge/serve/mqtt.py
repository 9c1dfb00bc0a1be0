"""MQTT with Home Assistant discovery: availability, state, face events, snapshots, recording/privacy switches.

paho-mqtt 2.x (imported only when ``mqtt.enabled``) runs the connection on its own thread (``loop_start``) and
reconnects with back-off; this module's publisher thread reads the :class:`LiveFeed` a few times a second and
publishes. The frame loop never waits on either: a broker that is down only costs dropped messages.

Topics, with ``base = <topic_prefix>/<device_id>``:

- ``base/availability``: ``online`` (retained) once connected, and again when an ``offline`` comes while it runs (a
  last will the broker sent late); ``offline`` as the last will and on a clean stop.
- ``base/state``: retained JSON ``{"expression", "faces", "present", "score"}``; on change, at most every
  ``state_interval_s``.
- ``base/diagnostics``: retained JSON ``{"fps", "disk_free_mib", "frames", "uptime_s"}`` every
  ``diagnostics_interval_s``.
- ``base/event``: JSON per track start, label change and end (``event_type`` names which), as
  :class:`~fer_edge.serve.homeassistant.EventPolicy` lets them through, once Home Assistant has the discovery;
  QoS 1, so one whose acknowledgement a disconnect lost comes twice, with the same ``event_id``.
- ``base/snapshot``: retained JPEG of the frame when a face appeared, at most one per burst; a blank one as soon
  as privacy is on, and on connecting with ``snapshot`` off. After a reconnect it is sent again only where the
  broker no longer holds it: every message updates Home Assistant's image entity and fires its automations.
- ``base/recording/active``: retained ``ON`` while video is being written.
- ``base/instance``: each process says hello here, so two devices with one id notice each other.
- ``base/recording/set``, ``base/privacy/set`` (``ON``/``OFF``, from Home Assistant) and their ``.../state``.
  Retained commands are ignored (the config decides the start state), and so are payloads over a few bytes.
- ``<discovery_prefix>/device/<topic_prefix>-<device_id>/config``: the retained device discovery message,
  sent again when Home Assistant announces ``online`` on ``<discovery_prefix>/status``, at most once per
  ``BIRTH_RESEND_INTERVAL_S`` (the last birth of a burst answered when it is over).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fer_edge.errors import FerEdgeError
from fer_edge.serve.announced import announced_path, read_announced, write_announced
from fer_edge.serve.homeassistant import (
    BirthResend,
    DeviceId,
    DiscoveryGate,
    EventPolicy,
    EventTimes,
    PresenceHold,
    SnapshotPolicy,
    Topics,
    default_device_id,
    discovery_payload,
    event_payload,
    state_payload,
)
from fer_edge.serve.live import LiveFeed, TrackEvent
from fer_edge.serve.ratelog import RateLimitedLog
from fer_edge.serve.switches import NAMES as SWITCH_NAMES
from fer_edge.serve.switches import Switches

if TYPE_CHECKING:
    from fer_edge.config.device import MqttConfig

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 0.25
SNAPSHOT_CHECK_S = 1.0  # after connecting: the retained snapshot the broker kept comes within this, if it kept one
RECONNECT_MIN_S, RECONNECT_MAX_S = 1, 60
CONNECT_TIMEOUT_S = 3.0  # an unroutable broker: also bounds how long a stop waits for paho's thread
CLOSE_TIMEOUT_S = 2.0  # the offline message on a clean stop gets this long to leave
MAX_COMMAND_BYTES = 16  # "ON", "OFF", "online", with room for spaces; anything larger is not a command
MAX_PACKET_BYTES = 64 * 1024  # what the broker may send us: commands and Home Assistant's birth message
# Home Assistant's birth message comes once as it starts; anyone allowed on the broker can send it in a loop, and
# each one asks for every retained message again.
BIRTH_RESEND_INTERVAL_S = 10.0
PUBLISH_QOS_BITS, PUBLISH_QOS_2 = 0xF6, 0x34  # a packet's first byte: its type and, for a PUBLISH, its QoS


def publish_packet_bytes(topic: str, payload: str | bytes, qos: int) -> int:
    """The size of the MQTT 5 PUBLISH packet (no properties) that carries ``payload`` to ``topic``."""
    body = len(payload.encode() if isinstance(payload, str) else payload)
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + 1 + body
    length_bytes = 1
    while remaining >= 128**length_bytes:
        length_bytes += 1
    return 1 + length_bytes + remaining


class MqttPublisher:
    """Publishes what ``feed`` shows to a broker and applies switch commands to ``switches``."""

    def __init__(
        self,
        feed: LiveFeed,
        switches: Switches,
        cfg: MqttConfig,
        *,
        password: str | None,
        labels: list[str],
        model: str | None = None,
        configuration_url: str | None = None,
    ) -> None:
        try:
            import paho.mqtt.client as mqtt
        except ImportError:
            raise FerEdgeError("mqtt.enabled: paho-mqtt is not installed (pip install 'paho-mqtt>=2,<3')") from None
        if not hasattr(mqtt, "CallbackAPIVersion"):
            raise FerEdgeError("mqtt.enabled: paho-mqtt 2.x needed (found 1.x: pip install 'paho-mqtt>=2,<3')")
        self._mqtt = mqtt
        self.feed = feed
        self.switches = switches
        self.cfg = cfg
        device = DeviceId(cfg.device_id, "mqtt.device_id") if cfg.device_id else default_device_id()
        log.info("mqtt: device id %s (%s)", device.value, device.why)
        self.device_id = device.value
        self.topics = Topics(cfg.topic_prefix, self.device_id, cfg.discovery_prefix)
        self.discovery = discovery_payload(self.topics, self.device_id, labels, model, configuration_url)
        # This process: a second device with our id says another; and the run in each event's id.
        self.instance = secrets.token_hex(4)
        self.events = EventPolicy(EventTimes(cfg.event_min_track_s, cfg.event_change_hold_s, cfg.event_cooldown_s))
        self.snapshots = SnapshotPolicy(cfg.snapshot_interval_s)
        self._last_snapshot: bytes | None = None  # the retained one, sent again after a reconnect if the broker lost it
        self._kept_snapshot: bytes | None = None  # sha256 of the retained snapshot the broker sent on subscribing
        self._snapshot_check = threading.Event()  # connected: compare it with ours once it had time to come
        self._snapshot_check_at: float | None = None
        self._earlier_device_checked = False
        self.presence = PresenceHold(cfg.presence_off_delay_s)
        self.gate = DiscoveryGate(cfg.birth_grace_s)
        self.births = BirthResend(BIRTH_RESEND_INTERVAL_S)
        self._privacy_due = threading.Event()
        self._online_due = threading.Event()  # someone else said offline for this running device
        self.connected = False
        self.outage = ""  # why it is not connected, once a connection failed: said in the service's status line
        self.refused: dict[str, str] = {}  # topic -> why, the subscriptions the broker refused on this connection
        self._subscribing: dict[int, list[str]] = {}  # message id -> the topics of a SUBSCRIBE not answered yet
        self._counts = {"disconnects": 0, "dropped": 0, "published": 0, "ignored": 0}
        self._counts_lock = threading.Lock()  # paho's thread, the publisher and readers of the stats
        self._warn = RateLimitedLog(log)
        self._switches_due: set[str] = set()  # switch states to publish, from the publisher thread only
        self._switches_lock = threading.Lock()
        # Retained messages paho refused while its queue was full: the newest per topic, from the publisher thread.
        self._retained_refused: dict[str, str | bytes] = {}
        self._outage_logged = False
        self._stop = threading.Event()
        self._resend = threading.Event()  # connected: send the retained state again
        self._thread: threading.Thread | None = None

        # MQTT 5, so that the broker is told the largest packet this client takes (MAX_PACKET_BYTES) and never
        # sends a bigger one: a huge message on a command topic then costs nothing here, not even reading it.
        client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"{self.topics.unique}-{self.instance}", protocol=mqtt.MQTTv5
        )
        client.will_set(self.topics.availability, "offline", qos=1, retain=True)
        if cfg.username is not None:
            client.username_pw_set(cfg.username, password)
        if cfg.tls:
            client.tls_set(ca_certs=cfg.tls_ca_file)
            client.tls_insecure_set(cfg.tls_insecure)
        client.reconnect_delay_set(RECONNECT_MIN_S, RECONNECT_MAX_S)
        client.connect_timeout = CONNECT_TIMEOUT_S
        client.max_queued_messages_set(cfg.queue_size)
        client.suppress_exceptions = True  # a failing callback must not end paho's network thread
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        self._last_error = ""
        self._broker_max_packet: int | None = None  # what the broker said it takes (MQTT 5 CONNACK), if it did
        client.reconnect = self._remember_failure(client.reconnect)  # type: ignore[method-assign] # paho drops why
        client._sock_recv = self._refuse_costly_packets(client._sock_recv)  # type: ignore[method-assign,assignment]
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_subscribe = self._on_subscribe
        self.client = client
        switches.listen(self._switch_changed)

    # --- life cycle

    def start(self) -> MqttPublisher:
        try:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            limits = Properties(PacketTypes.CONNECT)
            limits.MaximumPacketSize = MAX_PACKET_BYTES
            self.client.connect_async(
                self.cfg.host, self.cfg.port, keepalive=self.cfg.keepalive_s, clean_start=True, properties=limits
            )
        except (OSError, ValueError) as exc:
            raise FerEdgeError(f"mqtt.host: cannot connect to {self.cfg.host}:{self.cfg.port} ({exc})") from None
        self.client.loop_start()
        self._thread = threading.Thread(target=self._run, name="fer-edge-mqtt", daemon=True)
        self._thread.start()
        log.info("mqtt: publishing as %s to %s:%d", self.topics.base, self.cfg.host, self.cfg.port)
        return self

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=CLOSE_TIMEOUT_S)
        if self.connected:
            info = self.client.publish(self.topics.availability, "offline", qos=1, retain=True)
            try:
                info.wait_for_publish(CLOSE_TIMEOUT_S)
            except (RuntimeError, ValueError):
                pass
        # paho's thread may sit in a DNS lookup that never answers: the stop waits for it only so long.
        stopper = threading.Thread(target=self._stop_client, name="fer-edge-mqtt-stop", daemon=True)
        stopper.start()
        stopper.join(CLOSE_TIMEOUT_S)

    def _stop_client(self) -> None:
        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.reasoncodes import ReasonCode

        # The offline message may have found paho's queue full, or not have left yet: the broker sends the last
        # will (offline) too, where a plain disconnect would tell it to forget it.
        self.client.disconnect(reasoncode=ReasonCode(PacketTypes.DISCONNECT, "Disconnect with will message"))
        self.client.loop_stop()

    def _count(self, name: str) -> None:
        with self._counts_lock:
            self._counts[name] += 1

    def stats(self) -> dict:
        with self._counts_lock:
            counts = dict(self._counts)
        return {
            "connected": self.connected,
            **counts,
            "births": self.births.births,
            "events_seen": self.events.seen,
            "events_sent": self.events.sent,
            "snapshots_skipped": self.snapshots.skipped,
            "subscriptions_refused": dict(self.refused),
            "broker": f"{self.cfg.host}:{self.cfg.port}",
        }

    # --- paho's thread

    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        try:
            self._connected(client, reason_code, properties)
        except Exception:  # noqa: BLE001 - logged; paho's thread must go on
            log.exception("mqtt: handling the connection failed")

    def _connected(self, client: Any, reason_code: Any, properties: Any) -> None:
        if reason_code.is_failure:
            self._log_outage(f"broker refused the connection ({reason_code})")
            return
        # A broker drops the connection on a packet above its limit, and paho sends it again on each reconnect.
        self._broker_max_packet = getattr(properties, "MaximumPacketSize", None)
        self.connected = True
        self.outage = ""
        self._outage_logged = False
        log.info("mqtt: connected to %s:%d", self.cfg.host, self.cfg.port)
        topics = [
            *self.topics.switch_set.values(),
            *self.topics.ha_status,
            self.topics.instance,
            self.topics.availability,
            self.topics.snapshot,  # what the broker kept, only until it is compared with ours
        ]
        self._kept_snapshot = None
        self._snapshot_check.set()
        self.refused = {}
        _, mid = client.subscribe([(topic, 1) for topic in topics])
        self._subscribing = {mid: topics}
        self._resend.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reason_codes: list, properties: Any) -> None:
        topics = self._subscribing.pop(mid, None)
        if topics is None:
            return
        refused = {topic: str(reason) for topic, reason in zip(topics, reason_codes, strict=False) if reason.is_failure}
        for topic, why in refused.items():  # again at each reconnect: once a minute at most
            self._warn.warning(
                f"refused {topic}",
                "mqtt: the broker refused the subscription to %s (%s): its messages never arrive (check its ACL)",
                topic,
                why,
            )
        self.refused = refused

    def _remember_failure(self, reconnect: Callable[[], Any]) -> Callable[[], Any]:
        def remembering() -> Any:
            try:
                return reconnect()
            except ssl.SSLError as exc:
                self._last_error = f"TLS handshake failed: {exc.reason or exc}"
                raise
            except OSError as exc:
                self._last_error = f"broker unreachable ({exc.strerror or exc})"
                raise

        return remembering

    def _refuse_costly_packets(self, sock_recv: Callable[[int], bytes]) -> Callable[[int], bytes]:
        """A broker that sends what this client never asked for loses the connection, before the packet's body is
        read: paho reads every packet whole, up to 256 MB, whatever maximum it announced, and keeps each QoS 2
        message until the broker releases it, though every subscription asks for QoS 1."""

        def receiving(bufsize: int) -> bytes:
            packet = getattr(self.client, "_in_packet", None) or {}
            if packet.get("have_remaining"):
                size = packet.get("remaining_length", 0)
                if size > MAX_PACKET_BYTES:
                    self._warn.warning(
                        "large packet",
                        "mqtt: the broker sent a %d-byte packet, more than the %d this client takes: reconnecting",
                        size,
                        MAX_PACKET_BYTES,
                    )
                    raise ConnectionAbortedError(f"a {size}-byte packet")
                if packet.get("command", 0) & PUBLISH_QOS_BITS == PUBLISH_QOS_2:
                    self._warn.warning(
                        "qos 2", "mqtt: the broker sent a QoS 2 message, which no subscription asked for: reconnecting"
                    )
                    raise ConnectionAbortedError("a QoS 2 message")
            return sock_recv(bufsize)

        return receiving

    def _on_connect_fail(self, client: Any, userdata: Any) -> None:
        self._log_outage(self._last_error or "broker unreachable")

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason_code: Any, properties: Any) -> None:
        if self.connected:
            self._count("disconnects")
        self.connected = False
        self.gate.disconnected()
        if not self._stop.is_set():
            self._log_outage(f"connection lost ({reason_code})")

    def _log_outage(self, why: str) -> None:
        if not self._outage_logged:  # one line per outage, not one per retry; its first cause is the one to fix
            self.outage = why
            log.warning(
                "mqtt: %s:%d: %s; retrying every %d-%d s, the loop goes on",
                self.cfg.host,
                self.cfg.port,
                why,
                RECONNECT_MIN_S,
                RECONNECT_MAX_S,
            )
            self._outage_logged = True

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        try:
            self._command(message)
        except Exception as exc:  # noqa: BLE001 - a hostile or broken broker must not end paho's thread
            self._count("ignored")
            self._warn.warning("callback", "mqtt: a message could not be handled (%s: %s)", type(exc).__name__, exc)

    def _command(self, message: Any) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            self._count("ignored")
            self._warn.warning("topic", "mqtt: ignored a message whose topic is not UTF-8")
            return
        if topic == self.topics.snapshot:
            if message.retain:  # not our own live ones: what the broker held when this connection subscribed
                self._kept_snapshot = hashlib.sha256(message.payload).digest()
            return
        if len(message.payload) > MAX_COMMAND_BYTES:  # measured before any decoding or copying
            self._count("ignored")
            self._warn.warning(
                "size", "mqtt: %s: ignored a %d-byte payload (not a command)", topic, len(message.payload)
            )
            return
        payload = message.payload.decode("utf-8", "replace").strip()
        if topic in self.topics.ha_status:
            if payload == "online":
                self.gate.birth()
                self.births.birth()
            return
        if topic == self.topics.instance:
            self._other_instance(payload)
            return
        if topic == self.topics.availability:
            # A retained one came with the subscription, before this connection's "online". A live one came after
            # it: the last will of a connection the broker gave up on late (the Pi was back sooner after a power
            # cut), or a clean stop of another device with our id.
            if payload == "offline" and not message.retain and not self._stop.is_set():
                self._online_due.set()
            return
        for name, switch_topic in self.topics.switch_set.items():
            if topic != switch_topic:
                continue
            if message.retain:  # an old command kept by the broker: the config decides how the run starts
                self._count("ignored")
                self._warn.warning("retained", "mqtt: %s: ignored a retained command (clear it on the broker)", topic)
            elif payload.upper() in ("ON", "OFF"):
                if not self.switches.set(name, payload.upper() == "ON"):
                    self._switch_due(name)  # unchanged: confirm the state anyway
            else:
                self._count("ignored")
                self._warn.warning("payload", "mqtt: %s: expected ON or OFF", topic)

    # --- the publisher thread

    def _publish(self, topic: str, payload: Any, *, retain: bool = False, qos: int = 0) -> None:
        if not self.connected:
            self._count("dropped")
            return
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload, separators=(",", ":"))
        limit = self._broker_max_packet
        if limit is not None:
            size = publish_packet_bytes(topic, payload, qos)
            if size > limit:
                self._count("dropped")
                self._warn.warning(
                    f"too large {topic}",
                    "mqtt: %s: not sent: %d bytes, more than the broker takes (%d)",
                    topic,
                    size,
                    limit,
                )
                return
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        self._count("published" if info.rc == self._mqtt.MQTT_ERR_SUCCESS else "dropped")
        if retain:
            if info.rc == self._mqtt.MQTT_ERR_QUEUE_SIZE:  # it stands for good once sent: send it when there is room
                self._retained_refused[topic] = payload
            else:
                self._retained_refused.pop(topic, None)

    def _publish_refused_retained(self) -> None:
        for topic, payload in list(self._retained_refused.items()):
            info = self.client.publish(topic, payload, qos=1, retain=True)
            if info.rc == self._mqtt.MQTT_ERR_QUEUE_SIZE:
                return  # still full
            del self._retained_refused[topic]
            self._count("published" if info.rc == self._mqtt.MQTT_ERR_SUCCESS else "dropped")

    def _publish_switch(self, name: str) -> None:
        self._publish(self.topics.switch_state[name], "ON" if self.switches[name] else "OFF", retain=True, qos=1)

    def _switch_changed(self, name: str, on: bool) -> None:
        self._switch_due(name)  # maybe on the loop's thread (a recorder that failed): only noted here
        if name == "privacy" and on:
            self._privacy_due.set()

    def _other_instance(self, payload: str) -> None:
        kind, _, instance = payload.partition(":")
        if instance == self.instance or kind not in ("hello", "here"):
            return
        self._warn.warning(
            "duplicate",
            "mqtt: another device publishes as %s too (instance %s, this is %s): give each its own mqtt.device_id",
            self.topics.base,
            instance,
            self.instance,
        )
        if kind == "hello":  # it just connected: tell it too, once
            self._publish(self.topics.instance, f"here:{self.instance}", qos=1)

    def _switch_due(self, name: str) -> None:
        with self._switches_lock:
            self._switches_due.add(name)

    def _publish_switches_due(self) -> None:
        with self._switches_lock:
            due, self._switches_due = self._switches_due, set()
        for name in sorted(due):
            self._publish_switch(name)

    def _keep_network_thread(self) -> None:
        """Start paho's network thread again if something it did not catch ended it."""
        if getattr(self.client, "_thread", True) is None and not self._stop.is_set():
            log.warning("mqtt: the network thread ended; starting it again")
            self.client.loop_start()

    def _run(self) -> None:
        last_state, last_state_at, last_diag_at = None, float("-inf"), float("-inf")
        last_active: bool | None = None
        since = 0
        while not self._stop.wait(POLL_INTERVAL_S):
            try:
                self._keep_network_thread()
                for event in self.feed.events_since(since):  # even offline: the policy knows which tracks live
                    self.events.add(event)
                    since = event.seq
                if not self.connected:
                    continue
                now = time.monotonic()
                if self._resend.is_set() or self.births.due(now):
                    self._resend.clear()
                    self.births.resending(now)
                    if not self._earlier_device_checked:
                        self._forget_earlier_device()
                    self._publish(self.topics.discovery, self.discovery, retain=True, qos=1)
                    self.gate.discovery_sent(now)
                    self._publish(self.topics.availability, "online", retain=True, qos=1)
                    self._publish(self.topics.instance, f"hello:{self.instance}", qos=1)
                    for name in SWITCH_NAMES:
                        self._switch_due(name)
                    last_state, last_diag_at, last_active = None, float("-inf"), None
                if self._snapshot_check.is_set():
                    self._snapshot_check.clear()
                    self._snapshot_check_at = now + SNAPSHOT_CHECK_S
                if self._snapshot_check_at is not None and now >= self._snapshot_check_at:
                    self._snapshot_check_at = None
                    self._restore_snapshot()
                self._publish_refused_retained()
                if self._online_due.is_set():
                    self._online_due.clear()
                    self._warn.warning(
                        "offline",
                        "mqtt: %s said offline while this device runs: online again",
                        self.topics.availability,
                    )
                    self._publish(self.topics.availability, "online", retain=True, qos=1)
                self._publish_switches_due()
                if self._privacy_due.is_set():
                    self._privacy_due.clear()
                    self._publish_privacy_snapshot()
                active = bool(getattr(self.feed.recorder, "recording", False))
                if active != last_active:
                    self._publish(self.topics.recording_active, "ON" if active else "OFF", retain=True, qos=1)
                    last_active = active
                if self.gate.open(now):
                    due = self.events.due(time.time())
                    if due is not None:
                        self._publish_event(due, now)
                _, _, faces = self.feed.latest()
                state = state_payload(faces, self.presence.present(len(faces), now))
                if state != last_state and now - last_state_at >= self.cfg.state_interval_s:
                    self._publish(self.topics.state, state, retain=True)
                    last_state, last_state_at = state, now
                if now - last_diag_at >= self.cfg.diagnostics_interval_s:
                    self._publish(self.topics.diagnostics, self._diagnostics(), retain=True)
                    last_diag_at = now
            except Exception:  # noqa: BLE001 - a bug here must not end the publisher for the rest of the run
                log.exception("mqtt: publishing failed")

    def _publish_event(self, event: TrackEvent, now: float) -> None:
        self._publish(self.topics.event, event_payload(event, self.instance), qos=1)
        if event.kind != "start" or not self.cfg.snapshot or self.switches["privacy"]:
            return
        if not self.snapshots.wants(now):
            return
        _, frame, _ = self.feed.latest()  # the face has been there a while: the newest frame shows it labelled
        if frame is None:
            return
        from fer_edge.serve.web import encode_jpeg

        jpeg = encode_jpeg(frame.image, self.cfg.snapshot_width, 80)
        if jpeg is not None and self.snapshots.accept(jpeg, now):
            self._publish(self.topics.snapshot, jpeg, retain=True, qos=1)
            self._last_snapshot = jpeg

    def _forget_earlier_device(self) -> None:
        """Take the device announced last time off the broker where it was another one (a new device id, host name
        or prefix; see :mod:`fer_edge.serve.announced`), then note this one. Once a run, on its first connection."""
        self._earlier_device_checked = True
        path = announced_path()
        if path is None:
            return
        ours = self.topics.retained
        earlier = [topic for topic in read_announced(path) if topic not in ours]
        for topic in earlier:  # an empty retained message clears it; the discovery's removes the device
            self._publish(topic, b"", retain=True, qos=1)
        if earlier:
            log.info("mqtt: took the device announced before off the broker (%s)", earlier[0])
        try:
            write_announced(path, ours)
        except OSError as exc:
            log.warning("mqtt: cannot note the device announced in %s (%s)", path, exc)

    def _restore_snapshot(self) -> None:
        """The snapshot Home Assistant shows, once connected: sent again only where the broker lost it or holds
        another one (an earlier run's, which may show a face). Sent again for nothing, it would update Home
        Assistant's image entity, and fire the automations on it, at every reconnect."""
        self.client.unsubscribe(self.topics.snapshot)
        if self.switches["privacy"] or not self.cfg.snapshot:
            wanted = self._blank_snapshot()
        else:
            wanted = self._last_snapshot
        if wanted is not None and hashlib.sha256(wanted).digest() != self._kept_snapshot:
            self._put_snapshot(wanted)

    def _blank_snapshot(self) -> bytes | None:
        import numpy as np

        from fer_edge.serve.web import encode_jpeg

        width = self.cfg.snapshot_width
        return encode_jpeg(np.zeros((width * 9 // 16, width, 3), np.uint8), None, 80)

    def _publish_privacy_snapshot(self) -> None:
        """A blank snapshot in place of the retained one, which may show a face."""
        jpeg = self._blank_snapshot()
        if jpeg is not None:
            self._put_snapshot(jpeg)

    def _put_snapshot(self, jpeg: bytes) -> None:
        """``jpeg`` as the retained snapshot, in place of what stood there (not a new face: no snapshot policy)."""
        self._publish(self.topics.snapshot, jpeg, retain=True, qos=1)
        self.snapshots.replaced(jpeg)
        self._last_snapshot = jpeg

    def _diagnostics(self) -> dict[str, Any]:
        stats = self.feed.stats()
        free = stats.get("disk_free_bytes")
        return {
            "fps": stats["fps"],  # None until a whole window has passed
            "disk_free_mib": None if free is None else free // 1048576,
            "frames": stats["frames"],
            "uptime_s": round(stats["uptime_s"]),
        }
