"""The model contract (sidecar JSON) and the rule that the device side never needs TensorFlow."""

import ast
import json
import re
import shutil
from pathlib import Path

import pytest

from fer_edge.contract import ContractError, ModelSidecar, TensorSpec, file_sha256, read_sidecar, write_sidecar

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models" / "fer_int8.tflite"


@pytest.mark.parametrize("model", ["fer_int8.tflite", "fer_fast_int8.tflite"])
def test_shipped_models_match_their_sidecars(model):
    sidecar = read_sidecar(REPO / "models" / model)
    assert sidecar.labels == ("angry", "disgust", "fear", "happy", "neutral", "sad", "surprise")
    assert sidecar.input == TensorSpec((1, 48, 48, 1), "uint8", 1.0, 0)
    assert sidecar.output.shape == (1, 7)
    assert sidecar.variant == "int8"
    assert sidecar.metrics["private_accuracy"] > 0


def test_roundtrip_and_checksum(tmp_path):
    model = tmp_path / "m.tflite"
    model.write_bytes(b"not really a model, but bytes with a checksum")
    sidecar = ModelSidecar(
        labels=("a", "b"),
        input=TensorSpec((1, 4, 4, 1), "uint8", 1.0, 0),
        output=TensorSpec((1, 2), "uint8", 1 / 256, 0),
        sha256=file_sha256(model),
    )
    write_sidecar(model, sidecar)
    assert read_sidecar(model) == sidecar
    model.write_bytes(b"changed")
    with pytest.raises(ContractError, match="does not match its sidecar checksum"):
        read_sidecar(model)


def shipped_copy(tmp_path, edit=None, text=None):
    """The shipped model copied into tmp_path with its sidecar edited (its sha256 covers the .tflite only)."""
    model = tmp_path / SHIPPED.name
    shutil.copyfile(SHIPPED, model)
    raw = json.loads(SHIPPED.with_suffix(".json").read_text())
    if edit is not None:
        edit(raw)
    model.with_suffix(".json").write_text(json.dumps(raw) if text is None else text)
    return model


def _set(key, value):
    return lambda d: d.update({key: value})


def _set_in(section, key, value):
    return lambda d: d[section].update({key: value})


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("labels"), "malformed sidecar: labels: missing"),
        (_set("labels", ["a"] * 7), "distinct names"),
        (_set("labels", []), "labels: expected a non-empty list of distinct names, got []"),
        (lambda d: d.update(labels=d["labels"][:6]), "6 labels but the output has 7 classes"),
        (_set("format", "something-else/9"), "format"),
        # Each of these was accepted, or crashed with a traceback, and then broke the run
        (_set("labels", "abcdefg"), 'labels: expected a list of non-empty strings, got "abcdefg"'),
        (_set("labels", ["a", "b", "c", "d", "e", "f", 7]), "labels: expected a list of non-empty strings"),
        (_set("labels", ["a", "b", "c", "d", "e", "f", " "]), "labels: expected a list of non-empty strings"),
        (_set_in("output", "shape", []), "output.shape: expected a list of 2 positive integers, got []"),
        (_set_in("output", "shape", [1, 0]), "output.shape: expected a list of 2 positive integers, got [1, 0]"),
        (_set_in("output", "shape", [1, 7.5]), "output.shape: expected a list of 2 positive integers"),
        (_set_in("output", "shape", [7]), "output.shape: expected a list of 2 positive integers, got [7]"),
        (_set_in("input", "shape", [48, 48]), "input.shape: expected a list of 4 positive integers, got [48, 48]"),
        (_set_in("input", "shape", "48x48"), "input.shape: expected a list of 4 positive integers"),
        (_set_in("input", "scale", -1), "input.scale: expected a number >= 0, got -1"),
        (lambda d: d.pop("input"), "malformed sidecar: input: missing"),
        (_set("output", [1, 7]), "output: expected a JSON object, got [1, 7]"),
        (_set("face_margin", 0), "face_margin: expected a number in [0.25, 4], got 0"),
        (_set("face_margin", -1), "face_margin: expected a number in [0.25, 4], got -1"),
        (_set("face_margin", float("nan")), "face_margin: expected a number in [0.25, 4], got NaN"),
        (_set("face_margin", 100), "face_margin: expected a number in [0.25, 4], got 100"),
        (_set("face_margin", "1.04"), 'face_margin: expected a number in [0.25, 4], got "1.04"'),
        (_set("face_margin", True), "face_margin: expected a number in [0.25, 4], got true"),
        (_set("sha256", 12), "sha256: expected 64 lowercase hex digits, got 12"),
        (_set("metrics", []), "metrics: expected a JSON object, got []"),
    ],
)
def test_bad_sidecars_are_refused_naming_the_file_and_field(tmp_path, edit, message):
    _refused(tmp_path, edit, message)


@pytest.mark.parametrize(
    "edit, message",
    [
        (_set_in("calibration", "temperature", 0), "calibration.temperature: expected a number in [0.05, 20], got 0"),
        (_set_in("calibration", "temperature", -1.2), "calibration.temperature: expected a number in [0.05, 20]"),
        (_set_in("calibration", "temperature", float("inf")), "calibration.temperature: expected a number in"),
        (
            _set_in("calibration", "temperature", "1.1"),
            'calibration.temperature: expected a number in [0.05, 20], got "1.1"',
        ),
        (_set_in("calibration", "temperature_mirror", 1e6), "calibration.temperature_mirror: expected a number"),
        (_set_in("calibration", "temperature_mirror", None), "calibration.temperature_mirror: expected a number"),
        (lambda d: d["calibration"].pop("temperature_mirror"), "calibration.temperature_mirror: missing"),
        (_set_in("calibration", "bias", 0.1), "calibration.bias: unknown key"),
        (_set_in("calibration", "confidence", [[0.5, 0.4], [0.4, 0.6]]), "calibration.confidence: expected 2-64"),
        (_set_in("calibration", "confidence", [[0.4, 0.6], [0.5, 0.4]]), "calibration.confidence: expected 2-64"),
        (_set_in("calibration", "confidence_mirror", [[0.4, 0.6]]), "calibration.confidence_mirror: expected 2-64"),
        (_set_in("calibration", "confidence", [[0.4, 0.6], [0.9, 1.2]]), "calibration.confidence: expected 2-64"),
        (_set_in("calibration", "confidence", [[0.4, 0.6, 0.1], [0.9, 1]]), "calibration.confidence: expected"),
        (_set_in("calibration", "confidence", [[0.4, "0.6"], [0.9, 1]]), "calibration.confidence: expected"),
        (_set("calibration", 1.05), "calibration: expected a JSON object, got 1.05"),
    ],
)
def test_a_bad_calibration_is_refused_naming_the_field(tmp_path, edit, message):
    _refused(tmp_path, edit, message)


def _refused(tmp_path, edit, message):
    model = shipped_copy(tmp_path, edit)
    with pytest.raises(ContractError, match=re.escape(message)) as caught:
        read_sidecar(model)
    assert str(caught.value).startswith(f"{model.with_suffix('.json')}: ")
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("text", ["[]", "null", '"x"', "7"])
def test_a_sidecar_that_is_not_a_json_object_is_refused(tmp_path, text):
    model = shipped_copy(tmp_path, text=text)
    with pytest.raises(ContractError) as caught:
        read_sidecar(model)
    assert str(caught.value) == f"{model.with_suffix('.json')}: malformed sidecar: expected a JSON object, got {text}"


@pytest.mark.parametrize("model", ["fer_int8.tflite", "fer_fast_int8.tflite"])
def test_shipped_models_are_calibrated_for_both_modes(model):
    calibration = read_sidecar(REPO / "models" / model).calibration
    assert calibration is not None
    assert 0.5 < calibration.temperature < 2 and 0.5 < calibration.temperature_mirror < 2
    for knots in (calibration.confidence, calibration.confidence_mirror):
        assert 2 <= len(knots) <= 10 and all(0.14 < x < 1 and 0 < y < 1 for x, y in knots)
    mirrored = calibration.for_pass(mirror=True)
    assert (mirrored.temperature, mirrored.confidence) == (
        calibration.temperature_mirror,
        calibration.confidence_mirror,
    )


def test_a_sidecar_without_calibration_is_still_read(tmp_path):
    sidecar = read_sidecar(shipped_copy(tmp_path, lambda d: d.pop("calibration")))
    assert sidecar.calibration is None
    assert "calibration" not in json.loads(sidecar.to_json())


@pytest.mark.parametrize("margin", [0.25, 1, 4])
def test_face_margin_bounds_are_accepted(tmp_path, margin):
    sidecar = read_sidecar(shipped_copy(tmp_path, _set("face_margin", margin)))
    assert sidecar.face_margin == margin and isinstance(sidecar.face_margin, float)


def test_missing_files_are_named(tmp_path):
    with pytest.raises(ContractError, match="model not found"):
        read_sidecar(tmp_path / "none.tflite")
    (tmp_path / "lonely.tflite").write_bytes(b"x")
    with pytest.raises(ContractError, match="sidecar not found"):
        read_sidecar(tmp_path / "lonely.tflite")
    (tmp_path / "lonely.json").write_text("{not json")
    with pytest.raises(ContractError, match="unreadable"):
        read_sidecar(tmp_path / "lonely.tflite")


def test_edge_sources_never_import_tensorflow_or_keras():
    offenders = []
    for path in (REPO / "edge").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] in ("keras",)]
            # tensorflow.lite is the runtime's last fallback and is only imported inside a function
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node.col_offset == 0:
                offenders += [f"{path.relative_to(REPO)}: {n}" for n in names if n.split(".")[0] == "tensorflow"]
    assert not offenders


def test_edge_requirements_have_no_tensorflow():
    lines = [line.split("#")[0].strip().lower() for line in (REPO / "requirements-edge.txt").read_text().splitlines()]
    assert not [line for line in lines if line.startswith(("tensorflow", "keras", "tf-"))]
    assert any(line.startswith("ai-edge-litert") for line in lines)
