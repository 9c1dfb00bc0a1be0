"""The TFLite classifier with the shipped model: contract, preprocessing, accuracy on FER-2013, bad models."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import sys
import time

import cv2
import numpy as np
import pytest

import fer_edge.runtime as runtime_module
from fer_edge.contract import Calibration, ContractError, file_sha256, read_sidecar, sidecar_path
from fer_edge.errors import ModelError
from fer_edge.record.events import face_record
from fer_edge.runtime import load_interpreter_class
from fer_edge.types import Box, Face, Prediction
from fer_edge.vision.annotate import OverlayAnnotator
from fer_edge.vision.calibration import (
    calibrate,
    expected_calibration_error,
    fit_confidence_map,
    fit_temperature,
    map_confidence,
    temperature_scale,
)
from fer_edge.vision.classifier import ExpressionClassifier


@pytest.fixture(scope="module")
def classifier(model_path):
    return ExpressionClassifier(model_path)


@pytest.fixture
def model_copy(tmp_path, model_path):
    """A private copy of the shipped model and sidecar, to break."""
    copy = tmp_path / "model.tflite"
    shutil.copy(model_path, copy)
    shutil.copy(sidecar_path(model_path), sidecar_path(copy))
    return copy


def rewrite_sidecar(model: object, **changes) -> None:
    path = sidecar_path(model)
    raw = json.loads(path.read_text())
    raw.update(changes)
    path.write_text(json.dumps(raw))


def test_labels_and_input_come_from_the_model_and_sidecar(classifier, model_path):
    sidecar = read_sidecar(model_path)
    assert classifier.labels == sidecar.labels
    assert len(classifier.labels) == 7 and "happy" in classifier.labels
    assert (1, classifier.input_height, classifier.input_width, 1) == tuple(sidecar.input.shape)
    assert classifier.face_margin == sidecar.face_margin
    assert classifier.runtime == "ai_edge_litert.interpreter"


def test_prediction_is_a_distribution_over_the_sidecar_labels(classifier, public_faces):
    path, _ = public_faces(1)[0]
    gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
    prediction = classifier.classify(gray, Box(0, 0, 48, 48))
    assert isinstance(prediction, Prediction)
    assert prediction.labels == classifier.labels
    assert len(prediction.scores) == 7
    assert all(0.0 <= s <= 1.0 for s in prediction.scores)
    assert sum(prediction.scores) == pytest.approx(1.0, abs=0.05)  # uint8 softmax, dequantized


def test_public_test_faces_are_classified_well_above_chance(classifier, public_faces, model_path):
    faces = public_faces(200)
    margin = classifier.face_margin
    correct = 0
    for path, label in faces:
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        # The box whose margin-enlarged square is the whole 48x48 image: the crop is the FER face itself.
        side = round(48 / margin)
        box = Box((48 - side) // 2, (48 - side) // 2, side, side)
        correct += classifier.classify(gray, box).label == label
    accuracy = correct / len(faces)
    reported = read_sidecar(model_path).metrics.get("public_accuracy") or 0.5
    # Chance is 1/7 and the majority class 25 %; the model must reach what convert/ measured (200-face noise ~3.5 %).
    assert accuracy > max(0.35, reported - 0.1), f"accuracy {accuracy:.3f}, sidecar says {reported}"


def test_the_same_face_anywhere_in_a_large_frame_gets_the_same_answer(classifier, public_faces):
    """A face scaled up 4x into a camera-sized frame is cropped back to what the model saw alone.

    The margin takes in a pixel of the frame around the face and the up- and downscaling blur it,
    so faces whose two best scores are close may flip; a misplaced or mis-scaled crop flips most.
    """
    agree, differences = 0, []
    faces = public_faces(60, seed=3)
    for path, _ in faces:
        face = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        alone = classifier.classify(face, Box(0, 0, 48, 48))
        frame = np.full((480, 640), 90, np.uint8)
        frame[200:392, 300:492] = cv2.resize(face, (192, 192), interpolation=cv2.INTER_CUBIC)
        placed = classifier.classify(frame, Box(300, 200, 192, 192))
        agree += placed.label == alone.label
        differences.append(np.abs(np.subtract(placed.scores, alone.scores)).max())
    assert agree >= 0.8 * len(faces), f"{agree} of {len(faces)} faces keep their label"
    assert np.median(differences) < 0.1


def test_crop_is_a_margin_square_padded_by_edge_replication(classifier):
    gray = (np.arange(100 * 100).reshape(100, 100) % 241 + 9).astype(np.uint8)  # no border pixel is 0
    inside = classifier.crop(gray, Box(30, 30, 40, 40))
    side = round(40 * classifier.face_margin)
    assert inside.shape == (side, side)
    square = Box(30, 30, 40, 40).square(classifier.face_margin)
    np.testing.assert_array_equal(inside, gray[square.y : square.y2, square.x : square.x2])
    for box in (Box(-10, -10, 40, 40), Box(75, 80, 40, 40)):  # over the top-left, over the bottom-right
        crop = classifier.crop(gray, box)
        square = box.square(classifier.face_margin)
        padded = np.pad(gray, 50, mode="edge")
        np.testing.assert_array_equal(crop, padded[square.y + 50 : square.y2 + 50, square.x + 50 : square.x2 + 50])
    with pytest.raises(ValueError):
        classifier.crop(gray, Box(200, 200, 10, 10))


def test_a_one_pixel_box_in_a_corner_still_gets_a_crop_at_the_smallest_margin(classifier, monkeypatch):
    from fer_edge.contract import FACE_MARGIN_RANGE

    monkeypatch.setattr(classifier, "face_margin", FACE_MARGIN_RANGE[0])  # 1 px * 0.25 would round to nothing
    gray = np.zeros((360, 640), np.uint8)
    assert classifier.crop(gray, Box(639, 359, 1, 1)).shape == (1, 1)
    assert classifier.classify(gray, Box(639, 359, 1, 1)).label in classifier.labels


def test_a_box_mostly_past_the_edge_is_cropped_at_a_margin_under_one(classifier, monkeypatch):
    """A track carried out of the picture keeps a sliver in the frame; a square narrower than the box may then
    miss the frame, and the loop must not end on it."""
    monkeypatch.setattr(classifier, "face_margin", 0.8)
    gray = (np.arange(360 * 640).reshape(360, 640) % 241 + 9).astype(np.uint8)
    box = Box(-95, 100, 100, 100)  # 5 px of it in the frame
    assert box.square(0.8).clipped(640, 360).area == 0
    crop = classifier.crop(gray, box)
    square = box.clipped(640, 360).square(0.8)  # around the sliver: 80 px, from x = -38
    padded = np.pad(gray, 100, mode="edge")
    assert crop.shape == (80, 80)
    np.testing.assert_array_equal(crop, padded[square.y + 100 : square.y2 + 100, square.x + 100 : square.x2 + 100])
    assert classifier.classify(gray, box).label in classifier.labels


def test_classify_reuses_its_buffers_and_each_face_gets_its_own_scores(classifier, model_path):
    rng = np.random.default_rng(3)
    first, second = (rng.integers(0, 256, (120, 160), dtype=np.uint8) for _ in range(2))
    buffers = (classifier._input, classifier._input_plane, classifier._resized)
    scores_first = classifier.classify(first, Box(10, 10, 60, 60)).scores
    scores_second = classifier.classify(second, Box(50, 20, 90, 90)).scores
    assert all(a is b for a, b in zip((classifier._input, classifier._input_plane, classifier._resized), buffers))
    assert np.shares_memory(classifier._input, classifier._input_plane)
    fresh = ExpressionClassifier(model_path)  # nothing left over from an earlier face
    assert scores_second == fresh.classify(second, Box(50, 20, 90, 90)).scores != scores_first


def test_missing_sidecar_is_a_contract_error(model_copy):
    sidecar_path(model_copy).unlink()
    with pytest.raises(ContractError, match="sidecar not found"):
        ExpressionClassifier(model_copy)


def test_checksum_mismatch_is_a_contract_error(model_copy):
    with open(model_copy, "ab") as fh:
        fh.write(b"\0")
    with pytest.raises(ContractError, match="checksum"):
        ExpressionClassifier(model_copy)


def test_truncated_model_with_a_matching_sidecar_is_a_model_error(model_copy):
    data = model_copy.read_bytes()
    model_copy.write_bytes(data[: len(data) // 3])
    rewrite_sidecar(model_copy, sha256=file_sha256(model_copy))
    with pytest.raises(ModelError, match="not a loadable TFLite model") as caught:
        ExpressionClassifier(model_copy)
    assert "\n" not in str(caught.value)


def test_sidecar_disagreeing_with_the_model_input_is_a_model_error(model_copy):
    rewrite_sidecar(model_copy, input={"shape": [1, 64, 64, 1], "dtype": "uint8", "scale": 1.0, "zero_point": 0})
    with pytest.raises(ModelError, match="disagrees with the sidecar"):
        ExpressionClassifier(model_copy)


def test_sidecar_disagreeing_with_the_input_quantization_is_a_model_error(model_copy):
    rewrite_sidecar(model_copy, input={"shape": [1, 48, 48, 1], "dtype": "uint8", "scale": 0.5, "zero_point": 3})
    with pytest.raises(ModelError, match="input quantization"):
        ExpressionClassifier(model_copy)


def test_runtime_order_and_no_runtime(monkeypatch):
    assert runtime_module.RUNTIMES == ("ai_edge_litert.interpreter", "tflite_runtime.interpreter", "tensorflow.lite")
    for name in (*runtime_module.RUNTIMES, "tensorflow"):
        monkeypatch.setitem(sys.modules, name, None)  # import of a None entry raises ImportError
    with pytest.raises(ModelError, match="no TFLite runtime found"):
        load_interpreter_class()


@pytest.mark.filterwarnings("ignore:.*tf.lite.Interpreter is deprecated:UserWarning")
def test_falls_back_to_tensorflow_lite_without_litert(monkeypatch, model_path):
    pytest.importorskip("tensorflow", reason="the workstation venv has TensorFlow")  # .venv-train always does
    monkeypatch.setitem(sys.modules, "ai_edge_litert.interpreter", None)
    monkeypatch.setitem(sys.modules, "tflite_runtime.interpreter", None)
    _, runtime = load_interpreter_class()
    assert runtime == "tensorflow.lite"
    fallback = ExpressionClassifier(model_path)
    gray = np.full((64, 64), 128, np.uint8)
    cv2.circle(gray, (32, 32), 20, 200, -1)
    assert fallback.runtime == "tensorflow.lite"
    assert len(fallback.classify(gray, Box(8, 8, 48, 48)).scores) == 7


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fer_edge.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("damage", ["truncated", "no_sidecar", "checksum"])
def test_bad_model_is_one_line_on_stderr_via_the_cli(model_copy, demo_clip, tmp_path, damage):
    if damage == "truncated":
        model_copy.write_bytes(model_copy.read_bytes()[:5000])
        rewrite_sidecar(model_copy, sha256=file_sha256(model_copy))
        expected = "not a loadable TFLite model"
    elif damage == "no_sidecar":
        sidecar_path(model_copy).unlink()
        expected = "sidecar not found"
    else:
        model_copy.write_bytes(model_copy.read_bytes()[:-1] + b"\x01")
        expected = "checksum"
    result = run_cli(
        "run",
        "--source",
        str(demo_clip),
        "--model",
        str(model_copy),
        "--output",
        str(tmp_path / "o"),
        "--max-frames",
        "5",
    )
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if line.startswith("fer-edge: error:")]
    assert len(errors) == 1 and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()  # failed before anything was opened or recorded


# A float model whose GATHER reads row 100 of a 4-row table: it loads and allocates, and fails in invoke().
FAILS_IN_INVOKE = r"""
import sys
import numpy as np
import tensorflow as tf
table = tf.constant(np.ones((4, 7), np.float32))
@tf.function(input_signature=[tf.TensorSpec([1, 48, 48, 1], tf.float32)])
def scores(x):
    return tf.gather(table, tf.reshape(tf.cast(x[0, 0, 0, 0], tf.int32) + 100, [1]))
converter = tf.lite.TFLiteConverter.from_concrete_functions([scores.get_concrete_function()], scores)
open(sys.argv[1], "wb").write(converter.convert())
"""


@pytest.fixture(scope="module")
def model_failing_in_invoke(tmp_path_factory, model_path):
    """A real TFLite model (made with TensorFlow here) that loads but fails at its first invoke()."""
    model = tmp_path_factory.mktemp("invoke") / "fails_in_invoke.tflite"
    subprocess.run([sys.executable, "-c", FAILS_IN_INVOKE, str(model)], check=True, capture_output=True, timeout=300)
    raw = json.loads(sidecar_path(model_path).read_text())
    float32 = {"shape": [1, 48, 48, 1], "dtype": "float32", "scale": 0.0, "zero_point": 0}
    raw.update(input=float32, output={**float32, "shape": [1, 7]}, sha256=file_sha256(model), variant="float32")
    sidecar_path(model).write_text(json.dumps(raw))
    return model


def test_a_model_that_fails_when_run_is_refused_at_load(model_failing_in_invoke):
    with pytest.raises(ModelError, match="loads but fails when run .*GATHER|loads but fails when run .*out of bounds"):
        ExpressionClassifier(model_failing_in_invoke)


@pytest.mark.parametrize("command", ["check-config", "run"])
def test_a_model_that_fails_when_run_is_one_line_at_check_config_and_at_start(
    model_failing_in_invoke, demo_clip, tmp_path, command
):
    config = tmp_path / "config.yaml"
    config.write_text(f"model:\n  path: {model_failing_in_invoke}\nsource:\n  path: {demo_clip}\n")
    extra = ["--output", str(tmp_path / "o"), "--max-frames", "30"] if command == "run" else []
    result = run_cli(command, "--config", str(config), *extra)
    assert result.returncode == 1, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("fer-edge: error:")]
    assert len(errors) == 1 and "loads but fails when run" in errors[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "o").exists()  # refused before the source opened


def test_a_model_overwritten_in_place_during_a_run_does_not_stop_it(model_copy, repo_root, demo_clip, tmp_path):
    """``cp other.tflite model.tflite`` rewrites the file in place; a runtime that mapped the file dies of
    SIGBUS at its next inference (the file got shorter). The classifier holds its own copy of the bytes."""
    config = tmp_path / "config.yaml"
    config.write_text(
        f"model:\n  path: {model_copy}\nsource:\n  kind: file\n  path: {demo_clip}\n  loop: true\n  realtime: true\n"
        "logging:\n  status_interval_s: 0.5\n"
    )
    log = tmp_path / "stderr.log"
    with open(log, "w") as stderr:
        command = [sys.executable, "-m", "fer_edge.cli", "run", "--config", str(config), "--no-record"]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True)
    try:
        deadline = time.monotonic() + 60
        while "fps" not in log.read_text() and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert process.poll() is None and "fps" in log.read_text(), log.read_text()
        replacement = (repo_root / "models" / "fer_fast_int8.tflite").read_bytes()
        assert len(replacement) < model_copy.stat().st_size
        with open(model_copy, "r+b") as model:  # what cp does: truncate, then write
            model.truncate(0)
            model.write(replacement)
        lines_before = log.read_text().count("fps")
        time.sleep(3)  # ~90 frames, faces in most of them
        assert process.poll() is None, log.read_text()[-2000:]
        assert log.read_text().count("fps") >= lines_before + 3  # status lines keep coming
        process.send_signal(signal.SIGTERM)
        out, _ = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 0, log.read_text()[-2000:]
    faces = int(out.split("faces")[1].split()[0])
    assert faces > 50, out


# --- calibration and the mirrored pass ------------------------------------------------------------------------


def test_the_mirrored_pass_is_the_mean_of_the_face_and_its_mirror_image(model_path, public_faces):
    single = ExpressionClassifier(model_path, mirror=False)
    mirrored = ExpressionClassifier(model_path, mirror=True)
    calibration = read_sidecar(model_path).calibration
    assert calibration is not None and mirrored.calibration == single.calibration == calibration
    for path, _ in public_faces(5, seed=4):
        gray = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        box = Box(0, 0, 48, 48)
        crop = single.face_crop(gray, box).copy()
        mean = (single.model_scores(crop) + single.model_scores(np.ascontiguousarray(crop[:, ::-1]))) / 2
        expected = calibrate(mean, calibration.for_pass(mirror=True))
        assert mirrored.classify(gray, box).scores == pytest.approx(tuple(expected), abs=1e-6)
        alone = calibrate(single.model_scores(crop), calibration.for_pass(mirror=False))
        assert single.classify(gray, box).scores == pytest.approx(tuple(alone), abs=1e-6)


def test_calibration_lowers_the_calibration_error_on_held_back_faces(model_path, fer2013_dir):
    # Fit on one half of PublicTest, judge on the other: the calibration must carry to faces it never saw.
    files = sorted((fer2013_dir / "test").glob("*/PublicTest_*.jpg"))
    order = np.random.default_rng(0).permutation(len(files))
    classifier = ExpressionClassifier(model_path)
    labels = np.array([classifier.labels.index(files[i].parent.name) for i in order])
    scores = np.array(
        [classifier.model_scores(cv2.imread(str(files[i]), cv2.IMREAD_GRAYSCALE)) for i in order], np.float64
    )
    half = len(files) // 2
    temperature = fit_temperature(scores[:half], labels[:half])
    before = expected_calibration_error(scores[half:], labels[half:])
    after = expected_calibration_error(temperature_scale(scores[half:], temperature), labels[half:])
    assert after < before, (temperature, before, after)
    # the confidence map fitted after it follows what one temperature cannot
    knots = fit_confidence_map(temperature_scale(scores[:half], temperature), labels[:half])
    mapped = map_confidence(temperature_scale(scores[half:], temperature), knots)
    assert expected_calibration_error(mapped, labels[half:]) < after - 0.01, (after, knots)
    assert (mapped.argmax(1) == scores[half:].argmax(1)).all()
    assert mapped.sum(1) == pytest.approx(np.ones(len(mapped)))


def test_the_confidence_map_pools_where_accuracy_would_fall_and_keeps_the_top_class():
    # 40 faces at each of 10 confidences from 0.3 to 0.9, the top class right as often as ``accuracy`` says: a dip
    # at the eighth, which a non-decreasing map pools with the two before it.
    levels = np.linspace(0.3, 0.9, 10)
    accuracy = [0.5, 0.5, 0.5, 0.5, 0.5, 0.6, 0.6, 0.4, 0.6, 0.6]
    confidence = np.repeat(levels, 40)
    right = np.concatenate([np.arange(40) < 40 * a for a in accuracy])
    scores = np.stack([confidence, *((1 - confidence) * share for share in (0.4, 0.3, 0.2, 0.1))], axis=1)
    labels = np.where(right, 0, 1)
    knots = fit_confidence_map(scores, labels)
    assert knots[:5] == tuple((round(x, 4), 0.5) for x in levels[:5])
    assert knots[5] == (round(levels[5:8].mean(), 4), round(64 / 120, 4))  # 24 + 24 + 16 right of 120
    assert knots[6:] == ((round(levels[8], 4), 0.6), (0.9, 0.6))
    mapped = map_confidence(scores, knots)
    assert (mapped.argmax(1) == 0).all() and mapped.sum(1) == pytest.approx(np.ones(len(mapped)))
    assert mapped[:, 1] / mapped[:, 2] == pytest.approx(np.full(len(mapped), 0.4 / 0.3))  # the rest keep proportions
    assert np.array_equal(map_confidence(scores, ()), scores)


def test_a_sidecar_without_calibration_shows_the_model_scores_and_says_so(model_copy, caplog):
    raw = json.loads(sidecar_path(model_copy).read_text())
    del raw["calibration"]
    sidecar_path(model_copy).write_text(json.dumps(raw))
    with caplog.at_level("WARNING"):
        classifier = ExpressionClassifier(model_copy, mirror=True)
    assert classifier.calibration == Calibration()
    assert any("no calibration" in record.getMessage() for record in caplog.records)


def test_a_face_below_the_unsure_floor_is_shown_as_unsure(model_path):
    classifier = ExpressionClassifier(model_path, unsure_below=0.99)
    prediction = classifier.classify(np.full((48, 48), 128, np.uint8), Box(0, 0, 48, 48))
    assert prediction.unsure and prediction.shown_label == "?"
    face = Face(Box(0, 0, 48, 48), prediction, track_id=3)
    assert OverlayAnnotator().caption(face) == "#3 ?"
    record = face_record(face)  # the events log counts it as unsure, its calibrated scores kept
    assert record["label"] == "?" and record["score"] < 0.99 and set(record["scores"]) == set(classifier.labels)
    assert ExpressionClassifier(model_path).classify(
        np.full((48, 48), 128, np.uint8), Box(0, 0, 48, 48)
    ).shown_label in (classifier.labels)


def test_the_chance_calibration_error_is_what_sampling_alone_gives_a_calibrated_model():
    from fer_edge.vision.calibration import chance_calibration_error, expected_calibration_error

    # every face at 0.7, right 70% of the time: one bin, |binomial share - 0.7|, whose mean is known
    scores = np.tile([0.7, 0.3], (100, 1))
    for faces in (400, 1600):
        chance = chance_calibration_error(scores, faces, draws=2000)
        expected = np.sqrt(2 / np.pi) * np.sqrt(0.7 * 0.3 / faces)
        assert chance.faces == faces and abs(chance.mean - expected) < 0.1 * expected
        assert chance.p90 > chance.mean
    # a model a tenth over-confident reads far above it
    rng = np.random.default_rng(3)
    right = rng.random(1600) < 0.6
    assert expected_calibration_error(np.tile([0.7, 0.3], (1600, 1)), np.where(right, 0, 1)) > 5 * chance.p90
