"""Device configuration: one YAML file into frozen dataclasses, validated at start-up.

Unknown keys are rejected and every error names the key path, e.g.
``recording.segment_seconds: expected a positive number, got -3``. Defaults live here and in
``configs/edge-default.yaml`` (kept in sync by a test).
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fer_edge.errors import ConfigError, ModelError
from fer_edge.yamlconfig import apply_overrides, read_mapping

MODEL_FILENAME = "fer_int8.tflite"


# --- value checks, attached to fields through metadata -------------------------------------------


def _positive(value) -> str | None:
    return None if value > 0 else "expected a positive number"


def _non_negative(value) -> str | None:
    return None if value >= 0 else "expected a number >= 0"


def _fraction(value) -> str | None:
    return None if 0 < value <= 1 else "expected a number in (0, 1]"


def _unit(value) -> str | None:
    return None if 0 <= value < 1 else "expected a number in [0, 1)"


def _above_one(value) -> str | None:
    return None if value > 1 else "expected a number > 1"


def _positive_up_to(limit: float):
    def check(value) -> str | None:
        return None if 0 < value <= limit else f"expected a number in (0, {limit:g}]"

    return check


def _int_range(low: int, high: int):
    def check(value) -> str | None:
        return None if low <= value <= high else f"expected an integer {low}-{high}"

    return check


def _colour(value) -> str | None:
    return None if all(0 <= c <= 255 for c in value) else "expected three integers 0-255 (B, G, R)"


def _one_of(*choices: str):
    def check(value) -> str | None:
        return None if value in choices else f"expected one of {', '.join(choices)}"

    return check


def _opt(default, check=None):
    """A field with a default and an optional value check (``check(value) -> message | None``)."""
    if isinstance(default, (list, dict)):
        raise TypeError("use tuples for sequence defaults")
    return field(default=default, metadata={"check": check} if check else {})


# Upper bounds for values that pass as "positive" but break the run later. Fixed numbers, not
# os.cpu_count(): a config must mean the same on the workstation that checks it and on the Pi.
MAX_THREADS = 64  # TFLite interpreter threads: 16x a Pi's 4 cores; 100000 segfaults the runtime
MAX_THICKNESS = 50  # overlay line width in pixels (OpenCV asserts above 32767; 50 already hides a face)
MAX_FONT_SCALE = 10.0  # ~220 px text; far larger overflows OpenCV's text size into a cv2.error


# --- sections ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SourceConfig:
    kind: str = _opt("auto", _one_of("auto", "picamera2", "opencv", "file", "images"))
    path: str | None = None  # video file or image folder (kind file/images/auto)
    device: int | str = "0"  # OpenCV capture: camera index or stream URL
    width: int = _opt(640, _positive)
    height: int = _opt(480, _positive)
    fps: float = _opt(30.0, _positive)  # camera frame rate; image folders play at this rate
    realtime: bool = False  # pace files and image folders at their frame rate
    loop: bool = False  # restart files and image folders at their end
    reopen_initial_s: float = _opt(1.0, _positive)  # first wait before reopening a lost camera
    reopen_max_s: float = _opt(30.0, _positive)  # longest wait between reopen attempts


@dataclass(frozen=True)
class ModelConfig:
    path: str | None = None  # null: $FER_EDGE_MODEL, then the shipped model (see resolve_model_path)
    threads: int = _opt(1, _int_range(1, MAX_THREADS))


@dataclass(frozen=True)
class DetectorConfig:
    cascade: str | None = None  # null: haarcascade_frontalface_default.xml from the usual places
    detect_width: int = _opt(320, _positive)  # frames are downscaled to this width for detection
    scale_factor: float = _opt(1.1, _above_one)
    min_neighbors: int = _opt(5, _non_negative)
    min_size: int = _opt(40, _positive)  # smallest face side, full-frame pixels
    every_n_frames: int = _opt(3, _positive)  # detect on every n-th frame, track in between


@dataclass(frozen=True)
class OverlayConfig:
    enabled: bool = True
    show_score: bool = True
    box_color: tuple[int, int, int] = _opt((0, 255, 0), _colour)  # BGR
    text_color: tuple[int, int, int] = _opt((0, 0, 0), _colour)  # BGR
    font_scale: float = _opt(0.6, _positive_up_to(MAX_FONT_SCALE))
    thickness: int = _opt(2, _int_range(1, MAX_THICKNESS))


@dataclass(frozen=True)
class RecordingConfig:
    enabled: bool = True
    output_dir: str = "out"
    segment_seconds: float = _opt(300.0, _positive)
    fragment_seconds: float = _opt(1.0, _positive)
    codec: str = "libx264"
    crf: int = _opt(23, lambda v: None if 0 <= v <= 51 else "expected an integer 0-51")
    min_free_mb: float = _opt(500.0, _non_negative)
    presence_triggered: bool = False  # record only while faces are present (plus pre/post roll)
    pre_roll_s: float = _opt(3.0, _non_negative)
    post_roll_s: float = _opt(3.0, _non_negative)


@dataclass(frozen=True)
class EventsConfig:
    enabled: bool = True  # events.jsonl beside the recordings


@dataclass(frozen=True)
class TrackingConfig:
    enabled: bool = True
    iou_threshold: float = _opt(0.3, _fraction)
    max_missed: int = _opt(10, _non_negative)


@dataclass(frozen=True)
class SmoothingConfig:
    enabled: bool = True
    alpha: float = _opt(0.3, _fraction)
    hysteresis: float = _opt(0.1, _unit)


@dataclass(frozen=True)
class PrivacyConfig:
    mode: str = _opt("off", _one_of("off", "blur", "pixelate"))


@dataclass(frozen=True)
class LoggingConfig:
    level: str = _opt("INFO", _one_of("DEBUG", "INFO", "WARNING", "ERROR"))
    status_interval_s: float = _opt(5.0, _positive)


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

    def __post_init__(self):
        if self.source.reopen_max_s < self.source.reopen_initial_s:
            raise ConfigError(
                f"source.reopen_max_s: expected a number >= source.reopen_initial_s "
                f"({self.source.reopen_initial_s}), got {self.source.reopen_max_s}"
            )


# --- loading -------------------------------------------------------------------------------------


def load_config(path: str | os.PathLike | None = None, overrides: dict | None = None) -> Config:
    """Load ``path`` (None: built-in defaults), apply dotted ``overrides`` (``{"source.path": ...}``), validate."""
    raw = apply_overrides(read_mapping(path, "sections") if path is not None else {}, overrides)
    return _build(Config, raw, "")


def to_dict(cfg) -> dict:
    """Plain dicts and lists, for YAML output."""

    def plain(value):
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


def to_yaml(cfg) -> str:
    return yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False)


def _build(cls, raw, path: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{path or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in raw:
        if key not in fields:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key (known: {', '.join(fields)})")
    values = {}
    for key, value in raw.items():
        key_path = f"{path}.{key}" if path else key
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, {} if value is None else value, key_path)  # `source:` alone: defaults
            continue
        check = fields[key].metadata.get("check")
        if value is False and hint is str and check is not None and check("off") is None:
            value = "off"  # YAML 1.1 reads an unquoted off as false
        converted = _convert(hint, value, key_path)
        if check is not None and converted is not None:
            problem = check(converted)
            if problem:
                raise ConfigError(f"{key_path}: {problem}, got {value!r}")
        values[key] = converted
    return cls(**values)


def _describe(hint) -> str:
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null"}
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        return " or ".join(_describe(h) for h in typing.get_args(hint))
    if typing.get_origin(hint) is tuple:
        return f"a list of {len(typing.get_args(hint))} integers"
    return names.get(hint, str(hint))


def _convert(hint, value, key_path: str):
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    for kind in allowed:
        if kind is type(None) and value is None:
            return None
        if kind is bool and isinstance(value, bool):
            return value
        if isinstance(value, bool):
            continue
        if kind is float and isinstance(value, (int, float)) and math.isfinite(value):
            return float(value)
        if kind is int and isinstance(value, int):
            return value
        if kind is str and isinstance(value, str):
            return value
        if typing.get_origin(kind) is tuple and isinstance(value, (list, tuple)):
            items = typing.get_args(kind)
            if len(value) == len(items) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                return tuple(value)
    raise ConfigError(f"{key_path}: expected {_describe(hint)}, got {value!r}")


# --- the model file ------------------------------------------------------------------------------


def model_candidates(configured: str | None = None) -> list[Path]:
    """Where the model is looked for, in order: config, $FER_EDGE_MODEL, the checkout this package was
    installed from in place (pip install -e), the current folder's models/ (a plain install run from the
    repository), then the places deploy/install.sh and a system package use."""
    if configured:
        return [Path(configured)]
    if os.environ.get("FER_EDGE_MODEL"):
        return [Path(os.environ["FER_EDGE_MODEL"])]
    package = Path(__file__).resolve().parent
    in_checkout = package.parent.name == "edge"  # <repo>/edge/fer_edge/config.py, not site-packages
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
