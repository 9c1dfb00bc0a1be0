"""The model contract: the sidecar JSON written beside every ``.tflite``.

``convert/`` writes it, the classifier reads it; nothing else knows the labels or how a face
crop must look. This module needs only the standard library.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

FORMAT = "fer-edge-model/1"


class ContractError(Exception):
    """The model or its sidecar is missing, unreadable or inconsistent."""


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: str  # numpy dtype name: uint8, int8, float32
    scale: float = 0.0  # 0.0: not quantized
    zero_point: int = 0


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

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2) + "\n"


def sidecar_path(model_path: str | os.PathLike) -> Path:
    return Path(model_path).with_suffix(".json")


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_sidecar(model_path: str | os.PathLike, sidecar: ModelSidecar) -> Path:
    path = sidecar_path(model_path)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(sidecar.to_json())
    os.replace(tmp, path)
    return path


def read_sidecar(model_path: str | os.PathLike, verify_checksum: bool = True) -> ModelSidecar:
    """Read and validate the sidecar of ``model_path``; raise :class:`ContractError` with one clear line."""
    model_path = Path(model_path)
    if not model_path.is_file():
        raise ContractError(f"model not found: {model_path}")
    path = sidecar_path(model_path)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ContractError(f"model sidecar not found: {path} (every .tflite needs its .json from convert/)") from None
    except (OSError, ValueError) as exc:
        raise ContractError(f"model sidecar {path} is unreadable: {exc}") from None
    try:
        if raw.get("format") != FORMAT:
            raise ContractError(f"{path}: format {raw.get('format')!r}, expected {FORMAT!r}")
        sidecar = ModelSidecar(
            labels=tuple(str(x) for x in raw["labels"]),
            input=_spec(raw["input"]),
            output=_spec(raw["output"]),
            sha256=str(raw["sha256"]),
            variant=str(raw.get("variant", "int8")),
            face_margin=float(raw.get("face_margin", 1.0)),
            macs=int(raw.get("macs", 0)),
            params=int(raw.get("params", 0)),
            metrics=dict(raw.get("metrics", {})),
            source=dict(raw.get("source", {})),
        )
    except ContractError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ContractError(f"{path}: malformed sidecar ({type(exc).__name__}: {exc})") from None
    if not sidecar.labels or len(set(sidecar.labels)) != len(sidecar.labels):
        raise ContractError(f"{path}: labels must be a non-empty list of distinct names")
    if sidecar.output.shape[-1] != len(sidecar.labels):
        raise ContractError(
            f"{path}: {len(sidecar.labels)} labels but the output has {sidecar.output.shape[-1]} classes"
        )
    if verify_checksum and file_sha256(model_path) != sidecar.sha256:
        raise ContractError(
            f"{model_path} does not match its sidecar checksum: model and {path.name} are from different builds"
        )
    return sidecar


def _spec(raw: dict) -> TensorSpec:
    return TensorSpec(
        shape=tuple(int(d) for d in raw["shape"]),
        dtype=str(raw["dtype"]),
        scale=float(raw.get("scale", 0.0)),
        zero_point=int(raw.get("zero_point", 0)),
    )
