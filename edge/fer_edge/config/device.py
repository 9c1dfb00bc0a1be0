"""Device configuration: one YAML file into frozen dataclasses, validated at start-up.

Unknown keys are rejected and every error names the key path, e.g.
``recording.segment_seconds: expected a positive number, got -3``. Defaults live here and in
``configs/edge-default.yaml`` (kept in sync by a test).
"""

from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fer_edge.config.builder import apply_overrides, build_dataclass, read_mapping
from fer_edge.config.checks import (
    Check,
    above_up_to,
    at_most,
    camera_device,
    colour,
    fraction,
    int_range,
    listen_address,
    mqtt_host,
    mqtt_username,
    number_range,
    one_of,
    open_unit,
    path_given,
    positive_at_most,
    positive_up_to,
    token_problem,
    topic_id,
    unit,
    x264_tune,
)
from fer_edge.errors import ConfigError, ModelError
from fer_edge.vision.privacy import MODES as PRIVACY_MODES

log = logging.getLogger(__name__)

MODEL_FILENAME = "fer_int8.tflite"


def _opt(default: Any, check: Check | None = None) -> Any:
    """A field with a default and an optional value check (``check(value) -> message | None``)."""
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata={"check": check} if check else {})


# Upper bounds for values that pass as "positive" but break the run later. Fixed numbers, not
# os.cpu_count(): a config must mean the same on the workstation that checks it and on the Pi.
MAX_THREADS = 64  # TFLite interpreter threads: 16x a Pi's 4 cores; 100000 segfaults the runtime
MAX_THICKNESS = 50  # overlay line width in pixels (OpenCV asserts above 32767; 50 already hides a face)
MAX_FONT_SCALE = 10.0  # ~220 px text; far larger overflows OpenCV's text size into a cv2.error
MAX_SIDE = 8192  # camera frame width/height in pixels (8K); larger requests only fail inside the driver
MAX_FPS = 1000.0  # camera or image folder frame rate; beyond it a realtime replay's period rounds to nothing
MAX_REOPEN_S = 3600.0  # the longest wait between attempts to reopen a lost camera
MAX_STATUS_INTERVAL_S = 86400.0  # one status line a day at least
MAX_PRIVACY_HOLD_S = 5.0  # longer would blur where a face was long after it left
DEFAULT_CAMERA = "0"  # OpenCV capture's camera when none is named


# --- sections ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceConfig:
    kind: str = _opt("auto", one_of("auto", "picamera2", "opencv", "file", "images"))
    path: str | None = _opt(None, path_given)  # video file or image folder (kind file/images/auto)
    device: int | str = _opt(DEFAULT_CAMERA, camera_device)  # OpenCV capture: camera index or stream URL
    width: int = _opt(640, int_range(1, MAX_SIDE))
    height: int = _opt(480, int_range(1, MAX_SIDE))
    fps: float = _opt(30.0, above_up_to(0, MAX_FPS))  # camera frame rate; image folders play at this rate
    realtime: bool = False  # pace files and image folders at their frame rate
    loop: bool = False  # restart files and image folders at their end
    reopen_initial_s: float = _opt(1.0, above_up_to(0, MAX_REOPEN_S))  # first wait before reopening a lost camera
    reopen_max_s: float = _opt(30.0, above_up_to(0, MAX_REOPEN_S))  # longest wait between reopen attempts
    wait_at_start: bool = False  # a USB camera or stream that does not open at start is waited for as if lost


@dataclass(frozen=True)
class ModelConfig:
    # null: $FER_EDGE_MODEL, then the shipped model (see resolve_model_path)
    path: str | None = _opt(None, path_given)
    threads: int = _opt(1, int_range(1, MAX_THREADS))
    classify_every_s: float = _opt(0.1, number_range(0.0, 10.0))  # classify a tracked face this often; 0: each frame
    max_turn: float = _opt(0.5, number_range(0.0, 1.0))  # faces turned further are not classified (see docs)
    mirror: bool = True  # average the scores of the face and its mirror image (two passes per face)
    unsure_below: float = _opt(0.4, unit)  # calibrated score under which a face is shown as unsure ("?")


@dataclass(frozen=True)
class DetectorConfig:
    kind: str = _opt("blazeface", one_of("blazeface", "haar"))
    min_face: int = _opt(40, int_range(8, 4096))  # smallest face side to find, in camera-frame pixels
    every_n_frames: int = _opt(3, int_range(1, 100))  # look for tracked faces again every n-th frame
    full_scan_interval_s: float = _opt(1.0, positive_up_to(3600.0))  # whole-frame scan for new faces this often
    min_score: float | None = _opt(None, open_unit)  # blazeface: null = the model's own threshold
    # blazeface, privacy on: faces down to this score are blurred (not tracked or classified); null: min_score
    privacy_min_score: float | None = _opt(0.2, open_unit)
    # blazeface, privacy on: a cheap sweep between scans with this many tiles in turn; null: scan every frame
    sweep_tiles: int | None = _opt(None, int_range(0, 100))
    # blazeface: a scan region whose picture changed by no more than this (grey levels) keeps its last faces
    rescan_change: float = _opt(4.0, number_range(0.0, 255.0))
    # haar: null = haarcascade_frontalface_default.xml from the usual places
    cascade: str | None = _opt(None, path_given)
    detect_width: int = _opt(320, int_range(32, 4096))  # haar: frames are downscaled to this width
    scale_factor: float = _opt(1.1, number_range(1.01, 2.0))  # haar: pyramid step
    min_neighbors: int = _opt(5, int_range(0, 100))  # haar: higher, fewer and surer faces


@dataclass(frozen=True)
class OverlayConfig:
    enabled: bool = True
    show_score: bool = True
    box_color: tuple[int, int, int] = _opt((0, 255, 0), colour)  # BGR
    text_color: tuple[int, int, int] = _opt((0, 0, 0), colour)  # BGR
    font_scale: float = _opt(0.6, positive_up_to(MAX_FONT_SCALE))
    thickness: int = _opt(2, int_range(1, MAX_THICKNESS))


X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower", "veryslow")


MAX_SEGMENT_S = 3600.0  # one file per hour at most: a longer one is more to lose to a damaged card
MAX_FRAGMENT_S = 10.0  # the keyframe interval: what power loss can cost; x264 fails on absurd ones
MAX_ROLL_S = 60.0  # pre-roll frames are held in memory
MAX_FREE_MB = 1e9  # 1 PB: beyond any card; the file system's real size is checked at start-up
MAX_AGE_DAYS = 3650.0  # ten years; null keeps recordings until the disk floor deletes them


@dataclass(frozen=True)
class RecordingConfig:
    enabled: bool = True
    output_dir: str = _opt("out", path_given)
    segment_seconds: float = _opt(300.0, positive_at_most(MAX_SEGMENT_S))
    fragment_seconds: float = _opt(1.0, positive_at_most(MAX_FRAGMENT_S))  # <= segment_seconds
    codec: str = "auto"  # auto: the Pi's hardware H.264 encoder where it exists, else libx264; or an encoder name
    preset: str = _opt("ultrafast", one_of(*X264_PRESETS))  # libx264 speed/size trade-off
    tune: str = _opt("zerolatency", x264_tune)  # libx264; without zerolatency frames wait in the encoder
    crf: int = _opt(23, lambda v: None if 0 <= v <= 51 else "expected an integer 0-51")
    min_free_mb: float = _opt(500.0, at_most(MAX_FREE_MB))
    max_age_days: float | None = _opt(7.0, positive_up_to(MAX_AGE_DAYS))  # null: kept until the disk floor
    presence_triggered: bool = False  # record only while faces are present (plus pre/post roll)
    pre_roll_s: float = _opt(3.0, at_most(MAX_ROLL_S))
    post_roll_s: float = _opt(3.0, at_most(MAX_ROLL_S))
    record_width: int | None = _opt(None, int_range(16, 7680))  # null: the camera's; else scaled down to it
    record_fps: float | None = _opt(None, positive_up_to(240.0))  # null: every frame; else at most this rate

    def __post_init__(self) -> None:
        if self.fragment_seconds > self.segment_seconds:
            raise ConfigError(
                f"recording.fragment_seconds: expected a number <= recording.segment_seconds "
                f"({self.segment_seconds:g}), got {self.fragment_seconds:g}"
            )


@dataclass(frozen=True)
class EventsConfig:
    enabled: bool = True  # events.jsonl beside the recordings


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    iou_threshold: float = _opt(0.3, fraction)
    max_missed: int = _opt(10, int_range(0, 10_000))  # detections a track may miss before it ends


@dataclass(frozen=True)
class SmoothingConfig:
    enabled: bool = True
    time_constant_s: float = _opt(0.2, number_range(0.0, 60.0))  # EMA of the scores; 0 = none
    hysteresis: float = _opt(0.1, unit)  # smoothed-score lead a new label needs
    min_dwell_s: float = _opt(1.5, number_range(0.0, 60.0))  # a shown label stays at least this long
    decisive: float = _opt(0.5, number_range(0.0, 1.0))  # a class this sure (smoothed) is shown at once


@dataclass(frozen=True)
class PrivacyConfig:
    mode: str = _opt("off", one_of(*PRIVACY_MODES))
    # a face anonymized on a frame stays anonymized where it was for this long (a detector's score wavers)
    hold_s: float = _opt(0.25, number_range(0.0, MAX_PRIVACY_HOLD_S))


@dataclass(frozen=True)
class LoggingConfig:
    level: str = _opt("INFO", one_of("DEBUG", "INFO", "WARNING", "ERROR"))
    status_interval_s: float = _opt(5.0, above_up_to(0, MAX_STATUS_INTERVAL_S))


@dataclass(frozen=True)
class ServiceConfig:
    watchdog: bool = True  # ping the systemd watchdog while frames arrive


@dataclass(frozen=True)
class Config:
    source: SourceConfig = field(default_factory=SourceConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    overlay: OverlayConfig = field(default_factory=OverlayConfig)
    recording: RecordingConfig = field(default_factory=RecordingConfig)
    events: EventsConfig = field(default_factory=EventsConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    smoothing: SmoothingConfig = field(default_factory=SmoothingConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    service: ServiceConfig = field(default_factory=ServiceConfig)
    web: WebConfig = field(default_factory=lambda: WebConfig())
    mqtt: MqttConfig = field(default_factory=lambda: MqttConfig())

    def __post_init__(self) -> None:
        if self.source.reopen_max_s < self.source.reopen_initial_s:
            raise ConfigError(
                f"source.reopen_max_s: expected a number >= source.reopen_initial_s "
                f"({self.source.reopen_initial_s}), got {self.source.reopen_max_s}"
            )


# --- loading -------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> Config:
    """Load ``path`` (None: built-in defaults), apply dotted ``overrides`` (``{"source.path": ...}``), validate."""
    raw = apply_overrides(read_mapping(path, "sections") if path is not None else {}, overrides)
    _drop_retired(raw)
    return build_dataclass(Config, raw, renamed=RENAMED)


def _drop_retired(raw: dict) -> None:
    """Keys an earlier version's template wrote with what is now the only behaviour: dropped with a warning, so
    that an upgraded device keeps starting with the config it has (any other value is refused by RENAMED)."""
    for dotted, value in RETIRED.items():
        section, key = dotted.split(".")
        entries = raw.get(section)
        if isinstance(entries, dict) and key in entries and entries[key] is value:
            del entries[key]
            log.warning("%s: no longer used (it was %s, as now always); delete the line", dotted, value)


def to_dict(cfg: Any) -> dict:
    """Plain dicts and lists, for YAML output."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(cfg))


class _Dumper(yaml.SafeDumper):
    """Block style for sections, flow style for short lists (colours)."""


_Dumper.add_representer(
    list, lambda dumper, data: dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)
)


def to_yaml(cfg: Any) -> str:
    return yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


# Keys of earlier versions whose value then is the only behaviour now (deploy/config.yaml wrote them)
RETIRED = {"model.align": False}

# Keys of earlier versions, and what to write instead: an upgraded device's config names its way forward.
RENAMED = {
    "detector.min_size": "detector.min_face (the same pixels)",
    "smoothing.alpha": "smoothing.time_constant_s (seconds; alpha 0.3 at 30 fps was about 0.1 s)",
    "model.align": "the box crop always (delete the line: crops aligned on keypoints measured no better)",
}


# --- the model file ------------------------------------------------------------------------------


def model_candidates(configured: str | None = None) -> list[Path]:
    """Where the model is looked for, in order: config, $FER_EDGE_MODEL, the checkout this package was
    installed from in place (pip install -e), the current folder's models/ (a plain install run from the
    repository), then the places deploy/install.sh and a system package use."""
    if configured:
        return [Path(configured)]
    if os.environ.get("FER_EDGE_MODEL"):
        return [Path(os.environ["FER_EDGE_MODEL"])]
    package = Path(__file__).resolve().parents[1]
    in_checkout = package.parent.name == "edge"  # <repo>/edge/fer_edge/config/, not site-packages
    candidates = [package.parents[1] / "models" / MODEL_FILENAME] if in_checkout else []
    for candidate in (
        Path.cwd() / "models" / MODEL_FILENAME,
        Path("/var/lib/fer-edge/models/current/model.tflite"),
        Path("/usr/share/fer-edge/models") / MODEL_FILENAME,
    ):
        if candidate not in candidates:
            candidates.append(candidate)
    return candidates


def resolve_model_path(configured: str | None = None) -> Path:
    """The first existing candidate; a configured or $FER_EDGE_MODEL path is returned as given."""
    candidates = model_candidates(configured)
    if len(candidates) == 1:
        return candidates[0]
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    tried = ", ".join(str(c) for c in candidates)
    raise ModelError(f"no model found (tried {tried}); pass --model PATH, or set model.path or $FER_EDGE_MODEL")


# --- live view and home automation (fer_edge.serve.web, fer_edge.serve.mqtt) ---------------------------------


@dataclass(frozen=True)
class WebConfig:
    enabled: bool = False
    listen: str = _opt("127.0.0.1:8080", listen_address)  # host:port; [::1]:8080 for IPv6
    token: str | None = None  # every request needs it (16 characters at least); better: token_file or a credential
    token_file: str | None = None  # a file holding the token, not readable by others (chmod 600 or 640)
    stream_fps: float = _opt(5.0, number_range(0.1, 30.0))  # live view frames per second
    stream_width: int | None = _opt(None, int_range(64, 4096))  # null: the camera's width
    jpeg_quality: int = _opt(75, int_range(10, 100))
    max_connections: int = _opt(128, int_range(4, 1000))  # open at once; the longest-waiting idle one makes room
    max_viewers: int = _opt(4, int_range(1, 32))  # live streams open at once; more get 503

    def __post_init__(self) -> None:
        if self.token is not None and self.token_file is not None:
            raise ConfigError("web.token_file: set web.token or web.token_file, not both")
        if self.token is not None:
            problem = token_problem(self.token)
            if problem is not None:  # the message never shows the token
                raise ConfigError(f"web.token: {problem}")


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = False
    host: str = _opt("localhost", mqtt_host)  # a name or an address, not a URL
    port: int = _opt(1883, int_range(1, 65535))
    username: str | None = _opt(None, mqtt_username)
    password: str | None = None
    password_file: str | None = None  # a file holding the password, not readable by others
    tls: bool = False
    tls_ca_file: str | None = None  # null: the system's CAs
    tls_insecure: bool = False  # accept any broker certificate name (self-signed test brokers only)
    device_id: str | None = _opt(None, topic_id)  # null: the host name (with the machine id if a default name)
    topic_prefix: str = _opt("fer-edge", topic_id)
    discovery_prefix: str = _opt("homeassistant", topic_id)
    keepalive_s: int = _opt(30, int_range(2, 3600))  # the broker says offline after 1.5x this without us
    state_interval_s: float = _opt(2.0, positive_up_to(3600.0))  # state on change, at most this often
    diagnostics_interval_s: float = _opt(60.0, positive_up_to(86400.0))  # fps and disk free
    snapshot: bool = True  # a JPEG of the frame when a face appears (never while privacy is on)
    snapshot_width: int = _opt(480, int_range(64, 4096))
    snapshot_interval_s: float = _opt(10.0, positive_up_to(86400.0))  # one snapshot per burst of faces
    event_min_track_s: float = _opt(1.0, number_range(0.0, 60.0))  # a face tracked this long makes a start event
    event_change_hold_s: float = _opt(1.0, number_range(0.0, 60.0))  # a new label held this long makes a change
    event_cooldown_s: float = _opt(2.0, number_range(0.0, 3600.0))  # at least this long between two events
    presence_off_delay_s: float = _opt(5.0, number_range(0.0, 3600.0))  # presence off this long after the last face
    birth_grace_s: float = _opt(3.0, number_range(0.0, 60.0))  # no events sooner after discovery, unless HA says online
    queue_size: int = _opt(200, int_range(1, 100000))  # messages kept while the broker is slow

    def __post_init__(self) -> None:
        if self.password is not None and self.password_file is not None:
            raise ConfigError("mqtt.password_file: set mqtt.password or mqtt.password_file, not both")
        if self.tls_ca_file is not None and not self.tls:
            raise ConfigError("mqtt.tls_ca_file: set mqtt.tls: true to use it")
