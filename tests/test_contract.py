"""The model contract (sidecar JSON) and the rule that the device side never needs TensorFlow."""

import ast
import json
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
        labels=("a", "b"), input=TensorSpec((1, 4, 4, 1), "uint8", 1.0, 0),
        output=TensorSpec((1, 2), "uint8", 1 / 256, 0), sha256=file_sha256(model),
    )
    write_sidecar(model, sidecar)
    assert read_sidecar(model) == sidecar
    model.write_bytes(b"changed")
    with pytest.raises(ContractError, match="does not match its sidecar checksum"):
        read_sidecar(model)


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d.pop("labels"), "malformed sidecar"),
        (lambda d: d.update(labels=["a"] * 7), "distinct names"),
        (lambda d: d.update(labels=d["labels"][:6]), "6 labels but the output has 7 classes"),
        (lambda d: d.update(format="something-else/9"), "format"),
    ],
)
def test_bad_sidecars_are_refused(tmp_path, edit, message):
    model = tmp_path / SHIPPED.name
    shutil.copyfile(SHIPPED, model)
    raw = json.loads(SHIPPED.with_suffix(".json").read_text())
    edit(raw)
    model.with_suffix(".json").write_text(json.dumps(raw))
    with pytest.raises(ContractError, match=message):
        read_sidecar(model)


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
