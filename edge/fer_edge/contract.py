"""The model contract: the sidecar JSON written beside every ``.tflite``.

``convert/`` writes it, the classifier reads it; nothing else knows the labels or how a face
crop must look. This module needs only the standard library.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

FORMAT = "fer-edge-model/1"
INPUT_RANK = 4  # [1, H, W, 1]: one grayscale face crop
OUTPUT_RANK = 2  # [1, classes]
# Crop side / detector box side. convert/ measures 1.04 for the Haar cascade on FER-2013; outside
# [0.25, 4] the crop is not a face crop any more, and near 0 it rounds to an empty crop at run time.
FACE_MARGIN_RANGE = (0.25, 4.0)
FACE_MARGIN_PROBLEM = f"expected a number in [{FACE_MARGIN_RANGE[0]}, {FACE_MARGIN_RANGE[1]:g}]"
# A calibration temperature outside it collapses the scores onto one class or flattens them to uniform.
TEMPERATURE_RANGE = (0.05, 20.0)
TEMPERATURE_PROBLEM = f"expected a number in [{TEMPERATURE_RANGE[0]}, {TEMPERATURE_RANGE[1]:g}]"
MAX_CONFIDENCE_KNOTS = 64
CONFIDENCE_PROBLEM = (
    f"expected 2-{MAX_CONFIDENCE_KNOTS} [confidence, calibrated] pairs in [0, 1], confidences increasing and "
    "calibrated values not decreasing"
)


class ContractError(Exception):
    """The model or its sidecar is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: uint8, int8, float32
    scale: float = 0.0  # 0.0: not quantized
    zero_point: int = 0


@dataclass(frozen=True)
class PassCalibration:
    """One pass's half of a ``Calibration``: the single pass's or the mirrored pass's."""

    temperature: float
    confidence: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class Calibration:
    """Fitted on PublicTest: a temperature, ``p = softmax(log(p_model) / T)``, then a monotone map of the top
    class's probability (knots of a piecewise-linear curve, the other classes scaled to fill the rest; empty: no
    map). The ``_mirror`` fields are for the mean of a face's and its mirror image's scores."""

    temperature: float = 1.0
    temperature_mirror: float = 1.0
    confidence: tuple[tuple[float, float], ...] = ()
    confidence_mirror: tuple[tuple[float, float], ...] = ()

    def for_pass(self, mirror: bool) -> PassCalibration:
        if mirror:
            return PassCalibration(self.temperature_mirror, self.confidence_mirror)
        return PassCalibration(self.temperature, self.confidence)


@dataclass(frozen=True)
class ModelSidecar:
    labels: tuple[str, ...]  # in the model's output order
    input: TensorSpec
    output: TensorSpec
    sha256: str  # of the .tflite file
    variant: str = "int8"  # float32 | float16 | dynamic | int8
    # Face crop side = detector box side * face_margin, centred on the box: how FER-2013 crops
    # relate to an OpenCV Haar box (measured in convert/, see MODEL_CARD.md).
    face_margin: float = 1.0
    macs: int = 0
    params: int = 0
    metrics: dict = field(default_factory=dict)
    source: dict = field(default_factory=dict)  # run folder, config, training backend
    format: str = FORMAT
    calibration: Calibration | None = None  # None: a sidecar written before calibration (scores used as they are)

    def to_json(self) -> str:
        raw = asdict(self)
        if self.calibration is None:
            del raw["calibration"]
        else:  # a calibration without maps reads as it did before they existed
            for key in ("confidence", "confidence_mirror"):
                if not raw["calibration"][key]:
                    del raw["calibration"][key]
        return json.dumps(raw, indent=2) + "\n"


def sidecar_path(model_path: str | os.PathLike) -> Path:
    return Path(model_path).with_suffix(".json")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_sidecar(model_path: str | os.PathLike, sidecar: ModelSidecar) -> Path:
    """Write the sidecar of ``model_path`` whole or not at all: a full disk leaves the previous one (and no
    temporary file) behind, and its OSError names the sidecar."""
    path = sidecar_path(model_path)
    tmp = path.with_suffix(".json.tmp")
    try:
        tmp.write_text(sidecar.to_json())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if exc.filename is None:
            exc.filename = str(path)
        raise
    return path


def missing_model(model_path: Path) -> str:
    """Why ``model_path`` is not a model to load: a folder there (a copy into the wrong place) is told apart."""
    if model_path.is_dir():
        return f"model {model_path} is a folder, not a .tflite file"
    return f"model not found: {model_path}"


def read_sidecar(model_path: str | os.PathLike, verify_checksum: bool = True) -> ModelSidecar:
    """Read and validate the sidecar of ``model_path``; raise :class:`ContractError` with one clear line.

    Every field is checked here, at load, so that a bad sidecar stops the device before its first frame
    instead of crashing it when the first face appears; errors name the sidecar and the field."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ContractError(missing_model(model_path))
    path = sidecar_path(model_path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ContractError(f"model sidecar not found: {path} (every .tflite needs its .json from convert/)") from None
    except (OSError, ValueError, RecursionError) as exc:  # ValueError: bad JSON or not UTF-8
        raise ContractError(f"model sidecar {path} is unreadable: {exc}") from None
    if not isinstance(raw, dict):
        raise ContractError(f"{path}: malformed sidecar: expected a JSON object, got {_shown(raw)}")
    if raw.get("format") != FORMAT:
        raise ContractError(f"{path}: format {raw.get('format')!r}, expected {FORMAT!r}")
    try:
        output = _spec(raw, "output", OUTPUT_RANK)
        sidecar = ModelSidecar(
            labels=_labels(raw, classes=output.shape[-1]),
            input=_spec(raw, "input", INPUT_RANK),
            output=output,
            sha256=_field(raw, "sha256", _is_sha256, "expected 64 lowercase hex digits"),
            variant=_field(raw, "variant", _is_name, "expected a non-empty string", "int8"),
            face_margin=float(_field(raw, "face_margin", _is_face_margin, FACE_MARGIN_PROBLEM, 1.0)),
            macs=_field(raw, "macs", _is_count, "expected an integer >= 0", 0),
            params=_field(raw, "params", _is_count, "expected an integer >= 0", 0),
            metrics=dict(_field(raw, "metrics", _is_object, "expected a JSON object", {})),
            source=dict(_field(raw, "source", _is_object, "expected a JSON object", {})),
            calibration=_calibration(raw),
        )
    except _Malformed as exc:
        raise ContractError(f"{path}: {exc}") from None
    if verify_checksum and file_sha256(model_path) != sidecar.sha256:
        raise ContractError(
            f"{model_path} does not match its sidecar checksum: model and {path.name} are from different builds"
        )
    return sidecar


# --- field checks: each names the field and shows the offending value ---------------------------

_MISSING = object()


class _Malformed(Exception):
    """One bad field: ``malformed sidecar: KEY: PROBLEM, got VALUE`` (``KEY: missing`` when absent, and
    ``KEY: PROBLEM`` when ``value`` is not given but ``problem`` says it all); read_sidecar adds the path."""

    def __init__(self, key: str, problem: str | None, value: Any = _MISSING) -> None:
        if problem is None:
            text = "missing"
        elif value is _MISSING:
            text = problem
        else:
            text = f"{problem}, got {_shown(value)}"
        super().__init__(f"malformed sidecar: {key}: {text}")


def _shown(value: Any, limit: int = 60) -> str:
    """A value as it reads in the JSON file, shortened to one short line."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _field(
    raw: dict, key: str, check: Callable[[Any], bool], problem: str, default: Any = _MISSING, where: str = ""
) -> Any:
    name = f"{where}{key}"
    if key not in raw:
        if default is _MISSING:
            raise _Malformed(name, None)
        return default
    value = raw[key]
    if not check(value):
        raise _Malformed(name, problem, value)
    return value


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_count(value: Any) -> bool:
    return _is_int(value) and value >= 0


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _is_object(value: Any) -> bool:
    return isinstance(value, dict)


def _is_sha256(value: Any) -> bool:
    return isinstance(value, str) and re.fullmatch(r"[0-9a-f]{64}", value) is not None


def _is_face_margin(value: Any) -> bool:
    return _is_number(value) and FACE_MARGIN_RANGE[0] <= value <= FACE_MARGIN_RANGE[1]


def _is_temperature(value: Any) -> bool:
    return _is_number(value) and TEMPERATURE_RANGE[0] <= value <= TEMPERATURE_RANGE[1]


def _calibration(raw: dict) -> Calibration | None:
    section = _field(raw, "calibration", _is_object, "expected a JSON object", None)
    if section is None:
        return None
    keys = ("temperature", "temperature_mirror", "confidence", "confidence_mirror")
    unknown = sorted(set(section) - set(keys))
    if unknown:
        raise _Malformed(f"calibration.{unknown[0]}", f"unknown key ({', '.join(keys)})")

    def temperature(key: str) -> float:
        return float(_field(section, key, _is_temperature, TEMPERATURE_PROBLEM, where="calibration."))

    def knots(key: str) -> tuple[tuple[float, float], ...]:
        pairs = _field(section, key, _is_confidence_map, CONFIDENCE_PROBLEM, [], where="calibration.")
        return tuple((float(x), float(y)) for x, y in pairs)

    return Calibration(
        temperature("temperature"),
        temperature("temperature_mirror"),
        knots("confidence"),
        knots("confidence_mirror"),
    )


def _is_confidence_map(value: Any) -> bool:
    if not (isinstance(value, list) and 2 <= len(value) <= MAX_CONFIDENCE_KNOTS):
        return False
    if not all(isinstance(k, list) and len(k) == 2 and all(_is_number(v) and 0 <= v <= 1 for v in k) for k in value):
        return False
    return all(a[0] < b[0] and a[1] <= b[1] for a, b in zip(value, value[1:]))


def _labels(raw: dict, classes: int) -> tuple[str, ...]:
    labels = _field(
        raw,
        "labels",
        lambda v: isinstance(v, list) and all(_is_name(x) for x in v),
        "expected a list of non-empty strings",
    )
    if not labels or len(set(labels)) != len(labels):
        raise _Malformed("labels", "expected a non-empty list of distinct names", labels)
    if len(labels) != classes:
        raise _Malformed("labels", f"{len(labels)} labels but the output has {classes} classes")
    return tuple(labels)


def _spec(raw: dict, key: str, rank: int) -> TensorSpec:
    spec = _field(raw, key, _is_object, "expected a JSON object")
    where = f"{key}."
    shape = _field(
        spec,
        "shape",
        lambda v: isinstance(v, list) and len(v) == rank and all(_is_int(d) and d > 0 for d in v),
        f"expected a list of {rank} positive integers",
        where=where,
    )
    return TensorSpec(
        shape=tuple(shape),
        dtype=_field(spec, "dtype", _is_name, "expected a numpy dtype name", where=where),
        scale=float(_field(spec, "scale", lambda v: _is_number(v) and v >= 0, "expected a number >= 0", 0.0, where)),
        zero_point=_field(spec, "zero_point", _is_int, "expected an integer", 0, where),
    )
