"""What reaches Home Assistant, and when: calm face events, one snapshot per burst, a held presence, the device id.

Plain classes with no MQTT in them, driven by :class:`~fer_edge.serve.mqtt.MqttPublisher` from its thread with
a clock passed in, so each policy is tested on its own:

- :class:`EventPolicy`: a track's ``start`` only once the face was tracked for ``min_track_s`` and has a label; a
  ``change`` only once the new label held for ``change_hold_s``; an ``end`` only for a track whose start went
  out; at most one event per ``cooldown_s`` for the whole device (what waits is coalesced per track, so nothing
  piles up). Events ``cooldown_s`` apart never land in the same millisecond, so every one is a new state of
  Home Assistant's event entity and fires its triggers.
- :class:`SnapshotPolicy`: at most one snapshot per ``interval_s`` (a burst of starts gives one), never the same
  JPEG twice.
- :class:`PresenceHold`: presence stays on ``off_delay_s`` after the last face, so a missed detection does not
  flap the binary sensor.
- :class:`DiscoveryGate`: nothing event-like goes out before Home Assistant has the discovery message: its birth
  message (``online`` on ``homeassistant/status``, or ``<discovery_prefix>/status``) or ``grace_s`` after the
  discovery went out.
- :class:`BirthResend`: the discovery sent again for Home Assistant's birth message at most once per
  ``interval_s``, the last birth of a burst always answered.
- :func:`default_device_id`: the host name, or the machine id where the host name is a distribution default.
- :func:`discovery_payload` and :func:`state_payload`: the retained messages Home Assistant builds entities from.
"""

from __future__ import annotations

import hashlib
import logging
import platform
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_edge import __version__
from fer_edge.serve.live import TrackEvent
from fer_edge.serve.switches import NAMES as SWITCH_NAMES
from fer_edge.types import UNSURE_LABEL, Face

log = logging.getLogger(__name__)

# Host names that images ship with: two devices left at them would share one MQTT identity.
DEFAULT_HOST_NAMES = frozenset(
    {"raspberrypi", "raspberry", "pi", "localhost", "debian", "ubuntu", "dietpi", "orangepi", "rockpi", "device"}
)
MACHINE_ID_FILES = (Path("/etc/machine-id"), Path("/var/lib/dbus/machine-id"))
MACHINE_ID_CHARS = 8
NO_FACE = "none"
HA_DEFAULT_PREFIX = "homeassistant"  # Home Assistant's own default for discovery and for its birth message


class Topics:
    """The topics of one device: its own under ``topic_prefix``, Home Assistant's under ``discovery_prefix``."""

    def __init__(self, topic_prefix: str, device_id: str, discovery_prefix: str) -> None:
        self.unique = f"{topic_prefix}-{device_id}"
        base = f"{topic_prefix}/{device_id}"
        self.base = base
        self.availability = f"{base}/availability"
        self.state = f"{base}/state"
        self.diagnostics = f"{base}/diagnostics"
        self.event = f"{base}/event"
        self.snapshot = f"{base}/snapshot"
        self.switch_set = {name: f"{base}/{name}/set" for name in SWITCH_NAMES}
        self.switch_state = {name: f"{base}/{name}/state" for name in SWITCH_NAMES}
        self.recording_active = f"{base}/recording/active"
        self.instance = f"{base}/instance"
        self.discovery = f"{discovery_prefix}/device/{self.unique}/config"
        # Home Assistant's birth message: its own setting, homeassistant/status unless changed, whatever the
        # discovery prefix; a user who moved both has it on <prefix>/status
        self.ha_status = tuple(dict.fromkeys([f"{HA_DEFAULT_PREFIX}/status", f"{discovery_prefix}/status"]))

    @property
    def retained(self) -> list[str]:
        """Every topic this device leaves a retained message on: what taking it off the broker clears."""
        return [
            self.discovery,
            self.availability,
            self.state,
            self.diagnostics,
            self.snapshot,
            self.recording_active,
            *self.switch_state.values(),
        ]


def _id_chars(text: str) -> str:
    return "".join(c if c.isalnum() or c in "_-" else "-" for c in text)


@dataclass(frozen=True)
class DeviceId:
    value: str
    why: str  # for the log: where the id came from


def default_device_id(hostname: str | None = None, machine_id_files: tuple[Path, ...] = MACHINE_ID_FILES) -> DeviceId:
    """The host name, cut to Home Assistant's id characters; ``<host>-<machine id>`` where the host name is a
    default (``raspberrypi``), so two devices never share an id."""
    name = _id_chars((socket.gethostname() if hostname is None else hostname).split(".")[0])
    if name and name.lower() not in DEFAULT_HOST_NAMES:
        return DeviceId(name, f"the host name {name}")
    for path in machine_id_files:
        try:
            machine = path.read_text().strip()
        except OSError:
            continue
        if machine:
            value = f"{name or 'device'}-{_id_chars(machine)[:MACHINE_ID_CHARS]}"
            return DeviceId(value, f"the host name {name or '(none)'} is a default, so {path} decides")
    return DeviceId(name or "device", f"the host name {name or '(none)'} is a default and no machine id was found")


@dataclass(frozen=True)
class EventTimes:
    min_track_s: float = 1.0
    change_hold_s: float = 1.0
    cooldown_s: float = 2.0


@dataclass
class _Track:
    first_seen: float
    label: str | None  # the newest label seen
    label_since: float
    score: float | None
    box: tuple[int, int, int, int]
    frame: int
    published: str | None = None  # the label Home Assistant was told; None: its start did not go out
    ended: bool = False


def event_payload(event: TrackEvent, run: str) -> dict:
    """A track event as Home Assistant's event entity takes it: the API's fields, its ``type`` as ``event_type``,
    and ``event_id``, ``<run>-<seq>``: ``seq`` alone starts again at 1 with each run of the service, and a QoS 1
    message sent again after a lost acknowledgement must be told apart from a new event with the same ``seq``."""
    fields = event.as_dict()
    return {"event_type": fields.pop("type"), "event_id": f"{run}-{event.seq}", **fields}


@dataclass
class EventPolicy:
    """Turns the feed's raw track events into the few Home Assistant should see (see the module's text)."""

    times: EventTimes = field(default_factory=EventTimes)
    _tracks: dict[int, _Track] = field(default_factory=dict)
    _last_sent: float = float("-inf")
    _seq: int = 0
    seen: int = 0  # raw events in; ``sent`` of them (or their coalesced form) went out

    def add(self, event: TrackEvent) -> None:
        """Note a raw event; ``event.t`` is its wall-clock time."""
        self.seen += 1
        track = self._tracks.get(event.track)
        if event.kind == "end":
            if track is None:
                return
            if track.published is None:
                del self._tracks[event.track]  # too short or never labelled: it never existed for Home Assistant
            else:
                track.ended = True
            return
        label = None if event.label == UNSURE_LABEL else event.label  # an unsure face has no expression to tell
        if track is None:
            self._tracks[event.track] = _Track(event.t, label, event.t, event.score, event.box, event.frame)
            return
        if label != track.label:
            track.label, track.label_since = label, event.t
        track.score, track.box, track.frame = event.score, event.box, event.frame

    @property
    def sent(self) -> int:
        return self._seq

    def due(self, now: float) -> TrackEvent | None:
        """The one event to send at ``now`` (wall clock), or None; each track's oldest due item first."""
        if now < self._last_sent:  # the clock was set back (NTP, by hand): waits count from now, not from then
            self._last_sent = now
            for track in self._tracks.values():
                track.first_seen, track.label_since = min(track.first_seen, now), min(track.label_since, now)
        if now - self._last_sent < self.times.cooldown_s:
            return None
        for track_id, track in sorted(self._tracks.items(), key=lambda item: item[1].first_seen):
            kind = self._kind_due(track, now)
            if kind is None:
                continue
            if kind == "end":
                del self._tracks[track_id]
                label = track.published
            else:
                track.published = label = track.label
            self._seq += 1
            self._last_sent = now
            return TrackEvent(self._seq, kind, track_id, label, track.score, track.box, now, track.frame)
        return None

    def _kind_due(self, track: _Track, now: float) -> str | None:
        if track.ended:
            return "end"
        if track.label is None:
            return None
        if track.published is None:
            return "start" if now - track.first_seen >= self.times.min_track_s else None
        if track.label != track.published and now - track.label_since >= self.times.change_hold_s:
            return "change"
        return None


@dataclass
class SnapshotPolicy:
    """At most one snapshot per ``interval_s``, never the same JPEG twice in a row."""

    interval_s: float = 10.0
    _last_at: float = float("-inf")
    _last_digest: bytes = b""
    skipped: int = 0

    def wants(self, now: float) -> bool:
        return now - self._last_at >= self.interval_s

    def accept(self, jpeg: bytes, now: float) -> bool:
        """Whether ``jpeg`` should go out now; remembers it when it does."""
        digest = hashlib.sha256(jpeg).digest()
        if not self.wants(now) or digest == self._last_digest:
            self.skipped += 1
            return False
        self._last_at, self._last_digest = now, digest
        return True

    def replaced(self, jpeg: bytes) -> None:
        """Another image (the privacy placeholder) now stands on the topic."""
        self._last_digest = hashlib.sha256(jpeg).digest()


@dataclass
class PresenceHold:
    """Presence: on with a face, off only ``off_delay_s`` after the last one."""

    off_delay_s: float = 5.0
    _last_face: float = float("-inf")

    def present(self, faces: int, now: float) -> bool:
        if faces:
            self._last_face = now
        return now - self._last_face < self.off_delay_s


@dataclass
class DiscoveryGate:
    """Open once Home Assistant said ``online`` or ``grace_s`` after the discovery message went out."""

    grace_s: float = 3.0
    _sent_at: float | None = None
    _acknowledged: bool = False

    def discovery_sent(self, now: float) -> None:
        if self._sent_at is None:
            self._sent_at = now

    def disconnected(self) -> None:
        self._sent_at, self._acknowledged = None, False

    def birth(self) -> None:
        self._acknowledged = True

    def open(self, now: float) -> bool:
        if self._sent_at is None:
            return False
        return self._acknowledged or now - self._sent_at >= self.grace_s


@dataclass
class BirthResend:
    """Home Assistant's birth messages, coalesced: the first after a quiet ``interval_s`` gets the discovery sent
    again at once; those within ``interval_s`` of a resend get one more resend when that time is over, so the last
    of a burst is always answered and any burst costs one resend per ``interval_s``."""

    interval_s: float = 10.0
    _wanted: bool = False  # set by the network thread, cleared by the publisher's
    _last_sent: float = float("-inf")
    births: int = 0

    def birth(self) -> None:
        self.births += 1
        self._wanted = True

    def due(self, now: float) -> bool:
        return self._wanted and now - self._last_sent >= self.interval_s

    def resending(self, now: float) -> None:
        """A resend starts now (a birth's or a connection's): it answers every birth that came before it."""
        self._wanted = False
        self._last_sent = now


def live_view_url(listen: str, hostname: str | None = None) -> str:
    """The live view's address for Home Assistant's device page (``configuration_url``)."""
    from fer_edge.config.checks import parse_listen

    host, port = parse_listen(listen)
    if host in ("0.0.0.0", "::", ""):  # every address: the name others reach the device by
        host = hostname or socket.gethostname()
    return f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"


def discovery_payload(
    topics: Topics,
    device_id: str,
    labels: list[str],
    model: str | None,
    configuration_url: str | None = None,
) -> dict[str, Any]:
    """Home Assistant's device discovery message: the device, the origin and its components."""
    uid = topics.unique

    def component(key: str, platform_name: str, name: str, **options: Any) -> tuple[str, dict[str, Any]]:
        return f"{uid}_{key}", {
            "p": platform_name,
            "name": name,
            "unique_id": f"{uid}_{key}",
            "availability_topic": topics.availability,
            **options,
        }

    components = dict(
        [
            component(
                "expression",
                "sensor",
                "Expression",
                device_class="enum",
                options=[*labels, NO_FACE],
                state_topic=topics.state,
                value_template="{{ value_json.expression }}",
                icon="mdi:emoticon-outline",
            ),
            component(
                "faces",
                "sensor",
                "Faces",
                state_topic=topics.state,
                value_template="{{ value_json.faces }}",
                state_class="measurement",
                icon="mdi:account-multiple",
            ),
            component(
                "face_present",
                "binary_sensor",
                "Face present",
                device_class="occupancy",
                state_topic=topics.state,
                value_template="{{ value_json.present }}",
            ),
            component("face_event", "event", "Face", event_types=["start", "change", "end"], state_topic=topics.event),
            # An image entity, not a camera: its state is the time of the newest image, so automations trigger on it.
            component("last_face", "image", "Last face", image_topic=topics.snapshot, content_type="image/jpeg"),
            component(
                "recording_active",
                "binary_sensor",
                "Recording video",
                device_class="running",
                state_topic=topics.recording_active,
                icon="mdi:record-rec",
            ),
            component(
                "recording",
                "switch",
                "Recording",
                command_topic=topics.switch_set["recording"],
                state_topic=topics.switch_state["recording"],
                entity_category="config",
                icon="mdi:record-rec",
            ),
            component(
                "privacy",
                "switch",
                "Privacy",
                command_topic=topics.switch_set["privacy"],
                state_topic=topics.switch_state["privacy"],
                entity_category="config",
                icon="mdi:incognito",
            ),
            component(
                "fps",
                "sensor",
                "Frame rate",
                state_topic=topics.diagnostics,
                value_template="{{ value_json.fps }}",
                unit_of_measurement="fps",
                state_class="measurement",
                entity_category="diagnostic",
            ),
            component(
                "disk_free",
                "sensor",
                "Disk free",
                state_topic=topics.diagnostics,
                value_template="{{ value_json.disk_free_mib }}",
                device_class="data_size",
                unit_of_measurement="MiB",
                state_class="measurement",
                entity_category="diagnostic",
            ),
        ]
    )
    # The camera this image replaces: a component sent with its platform only is removed from the device.
    components[f"{uid}_snapshot"] = {"p": "camera"}
    device: dict[str, Any] = {
        "identifiers": [uid],
        "name": f"fer-edge {device_id}",
        "manufacturer": "fer-edge",
        "model": f"expression recognition ({model})" if model else "expression recognition",
        "sw_version": __version__,
        "hw_version": platform.machine(),
    }
    if configuration_url is not None:
        device["configuration_url"] = configuration_url
    return {"dev": device, "o": {"name": "fer-edge", "sw_version": __version__}, "cmps": components}


def state_payload(faces: Sequence[Face], present: bool) -> dict[str, Any]:
    """The shown expression of the largest face that has one, the face count, and presence (held)."""
    labelled = [face for face in faces if face.shown is not None and not face.shown.unsure]
    main = max(labelled, key=lambda face: face.box.area, default=None)
    shown = main.shown if main is not None else None
    return {
        "expression": shown.label if shown is not None else NO_FACE,
        "score": round(shown.score, 2) if shown is not None else None,
        "faces": len(faces),
        "present": "ON" if present or faces else "OFF",
    }
