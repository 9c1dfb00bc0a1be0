"""Convert a run's best Keras model to TFLite variants and check each against Keras on PublicTest."""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert import VARIANTS
from fer_edge.contract import (
    Calibration,
    ContractError,
    ModelSidecar,
    TensorSpec,
    file_sha256,
    read_sidecar,
    sidecar_path,
    write_sidecar,
)
from fer_edge.runtime import dequantize, load_interpreter_class, pixel_lut
from fer_edge.vision.calibration import calibrate, expected_calibration_error, fit_calibration
from train import data
from train.evaluate import plot_confusion, split_metrics
from train.quiet import NOTICES, held_back

log = logging.getLogger(__name__)

MAX_INT8_DROP = 0.01  # the int8 model may lose at most one accuracy point against Keras on PublicTest
# Crop side = Haar box side * FACE_MARGIN: FER-2013 faces fill their 48x48 image so that OpenCV's
# frontal-face cascade finds a box of 0.96 of the side, centred (median over PublicTest, see
# tests/test_train_data.py::test_face_margin_matches_haar_on_fer2013, faces of ~200 px; MODEL_CARD.md gives the
# range over face sizes).
FACE_MARGIN = 1.04


class ParityError(Exception):
    """A quantized model strays too far from its Keras original."""


class RunError(Exception):
    """A run folder whose model or record cannot be read."""


class PrivateTestError(Exception):
    """PrivateTest asked for where the protocol does not score it: a candidate, or a model already scored."""


class ShipError(Exception):
    """A model that must not replace the shipped one without being told to (``--force``), or could not."""


@dataclass(frozen=True)
class VariantResult:
    variant: str
    path: Path
    keras_accuracy: float
    tflite_accuracy: float
    agreement: float


def representative_images(split: data.Split, count: int = 500, seed: int = 0):
    sample = split.head(max(1, count // len(data.CLASS_NAMES)), seed)
    for image in sample.x:
        yield [image[None, :, :, None].astype(np.float32)]


def convert_model(model, variant: str, calibration: data.Split) -> bytes:
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif variant == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: representative_images(calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = tf.uint8
        converter.inference_output_type = tf.uint8
    elif variant != "float32":
        raise ValueError(f"unknown variant {variant!r}; choose from {VARIANTS}")
    # Keras' SavedModel export prints every traced tensor to stdout; keep it out of the user's log.
    with (
        contextlib.redirect_stdout(io.StringIO()) as export_log,
        held_back(1, _cpp_notice),
        held_back(2, _cpp_notice),
        warnings.catch_warnings(),
    ):
        warnings.filterwarnings("ignore", "Statistics for quantized inputs were expected")
        tf_log = logging.getLogger("tensorflow")
        level, tf_log.level = tf_log.level, logging.WARNING  # "Assets written to ..." for each export
        try:
            model_bytes = converter.convert()
        finally:
            tf_log.setLevel(level)
    log.debug("SavedModel export: %s", export_log.getvalue())
    return model_bytes


# The converter's and the interpreter's C++ sides write to file descriptors 1 and 2 directly (absl/glog lines
# such as "W0000 00:00:... ", the quantizer's settings, the XNNPACK notice), past Python's logging and
# TF_CPP_MIN_LOG_LEVEL.
_CPP_LINE = re.compile(r"^[IWE]\d{4} \d\d:\d\d:\d\d|^fully_quantize: |^INFO: Created TensorFlow Lite XNNPACK delegate")


def _cpp_notice(line: str) -> bool:
    return bool(NOTICES.search(line) or _CPP_LINE.match(line))


def make_interpreter(model_path: Path, threads: int = 1):
    """An interpreter from the runtime the device would pick (LiteRT first)."""
    interpreter_class, _ = load_interpreter_class()
    with held_back(2, _cpp_notice):
        interpreter = interpreter_class(model_path=str(model_path), num_threads=threads)
        interpreter.allocate_tensors()
    return interpreter


def tflite_macs(model_path: Path) -> int:
    """Multiply-accumulates of one inference, counted over the TFLite graph's conv and dense ops."""
    interpreter = make_interpreter(model_path)
    shapes = {t["index"]: t["shape"] for t in interpreter.get_tensor_details()}
    macs = 0
    for op in interpreter._get_ops_details():  # noqa: SLF001 (the only way to walk the graph)
        name, inputs, outputs = op["op_name"], op["inputs"], op["outputs"]
        if name not in ("CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED"):
            continue
        out, weights = shapes[outputs[0]], shapes[inputs[1]]
        if name == "CONV_2D":  # weights (cout, kh, kw, cin)
            macs += int(np.prod(out)) * int(np.prod(weights[1:]))
        elif name == "DEPTHWISE_CONV_2D":  # weights (1, kh, kw, channels)
            macs += int(np.prod(out)) * int(weights[1] * weights[2])
        else:  # weights (units, inputs)
            macs += int(np.prod(out)) * int(weights[1])
    return macs


def tflite_scores(model_path: Path, images: np.ndarray, threads: int = 2) -> np.ndarray:
    """Dequantized class scores for uint8 images (N, 48, 48), fed the way the device feeds them."""
    interpreter = make_interpreter(model_path, threads)
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    lut = pixel_lut(inp)
    scores = np.empty((len(images), out["shape"][-1]), np.float32)
    for i, image in enumerate(images):
        interpreter.set_tensor(inp["index"], lut[image][None, :, :, None])
        interpreter.invoke()
        scores[i] = dequantize(interpreter.get_tensor(out["index"])[0], out)
    return scores


def mirrored_scores(
    model_path: Path, images: np.ndarray, single: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Scores of each face alone (``single`` when the caller has them) and the mean with its mirror image's, fed
    the way the device feeds them."""
    if single is None:
        single = tflite_scores(model_path, images)
    mirror = tflite_scores(model_path, np.ascontiguousarray(images[:, :, ::-1]))
    return single, (single + mirror) / 2


def calibration_metrics(
    prefix: str, single: np.ndarray, mirrored: np.ndarray, y: np.ndarray, cal: Calibration
) -> dict[str, float]:
    """Accuracy and top-1 ECE of both modes, before and after calibration, as sidecar metrics."""
    calibrated = calibrate(single, cal.for_pass(mirror=False))
    calibrated_mirror = calibrate(mirrored, cal.for_pass(mirror=True))
    wrong = calibrated_mirror.argmax(1) != y
    return {
        f"{prefix}_mirror_accuracy": round(float((mirrored.argmax(1) == y).mean()), 4),
        f"{prefix}_ece": round(expected_calibration_error(single, y), 4),
        f"{prefix}_ece_calibrated": round(expected_calibration_error(calibrated, y), 4),
        f"{prefix}_mirror_ece": round(expected_calibration_error(mirrored, y), 4),
        f"{prefix}_mirror_ece_calibrated": round(expected_calibration_error(calibrated_mirror, y), 4),
        f"{prefix}_mirror_wrong_confidence": round(float(calibrated_mirror.max(1)[wrong].mean()), 4),
    }


# what calibration_metrics("private", ...) writes into a sidecar: scored once per shipped model
PRIVATE_CALIBRATION_METRICS = tuple(
    f"private_{name}"
    for name in (
        "mirror_accuracy",
        "ece",
        "ece_calibrated",
        "mirror_ece",
        "mirror_ece_calibrated",
        "mirror_wrong_confidence",
    )
)


def fit_model_calibration(
    model_path: Path, public: data.Split, single: np.ndarray | None = None
) -> tuple[Calibration, dict]:
    """The single and the mirrored pass's calibration, fitted on all of PublicTest, and their metrics."""
    single, mirrored = mirrored_scores(model_path, public.x, single)
    cal = fit_calibration(single, mirrored, public.y)
    return cal, calibration_metrics("public", single, mirrored, public.y, cal)


def private_calibration_metrics(
    model_path: Path, private: data.Split, cal: Calibration, single: np.ndarray | None = None
) -> dict:
    """The shipped numbers: scored once, when a model ships, with the calibration fitted on PublicTest."""
    single, mirrored = mirrored_scores(model_path, private.x, single)
    return calibration_metrics("private", single, mirrored, private.y, cal)


def unfinished(run_dir: Path) -> str | None:
    """Why ``run_dir`` looks like a run that stopped before its last epoch, or None when it finished."""
    import yaml

    from train.fit import read_history

    try:
        planned = int(yaml.safe_load((run_dir / "config.yaml").read_text())["epochs"])
    except (OSError, ValueError, TypeError, KeyError, yaml.YAMLError):
        return f"{run_dir}/config.yaml does not say how many epochs the run was to train"
    trained = len(read_history(run_dir))
    if trained < planned:
        return f"{run_dir} trained {trained} of its {planned} epochs"
    return None


def ship_refusal(candidate_public: float, target: Path) -> str | None:
    """Why a model scoring ``candidate_public`` on PublicTest must not replace ``target``, or None."""
    if not target.exists():
        return None
    try:
        shipped = read_sidecar(target, verify_checksum=False).metrics.get("public_accuracy")
    except ContractError:
        return None  # nothing usable to protect
    if isinstance(shipped, (int, float)) and candidate_public < shipped:
        return f"it scores {100 * candidate_public:.2f}% on PublicTest, the shipped {target} {100 * shipped:.2f}%"
    return None


def tensor_spec(detail: dict) -> TensorSpec:
    scale, zero = detail["quantization"]
    return TensorSpec(
        shape=tuple(int(d) for d in detail["shape"]),
        dtype=np.dtype(detail["dtype"]).name,
        scale=float(scale),
        zero_point=int(zero),
    )


def convert_run(
    run_dir: Path,
    out_dir: Path,
    variants=VARIANTS,
    data_dir=None,
    cache_dir="build/cache",
    ship_as: Path | None = None,
    tta: str = "none",
    force: bool = False,
) -> list[VariantResult]:
    """Convert ``run_dir/best.keras`` to each variant in ``out_dir``; optionally copy the int8 one to ``ship_as``.

    Every variant is checked on PublicTest. PrivateTest is scored once, for the int8 model being
    shipped and only after it passed its parity check: a candidate converted for comparison, the
    other variants and a model that fails parity never see it.

    ``tta="flip"`` converts the model averaged with its mirror-image pass (see ``with_flip_tta``).

    Each variant's sidecar gets a calibration fitted on PublicTest. Unless ``force``, a run that stopped before
    its last epoch, or an int8 model scoring lower on PublicTest than the one at ``ship_as``, is not shipped
    (:class:`ShipError`; the candidate stays in ``out_dir``).
    """
    import keras

    from train.models import with_flip_tta

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if ship_as is not None and "int8" in variants and not force and (reason := unfinished(run_dir)):
        raise ShipError(f"not shipping to {ship_as}: {reason} (FORCE=1, or --force, ships it anyway)")
    try:
        run_info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError) as exc:
        raise RunError(f"{run_dir}/run.json is unreadable ({exc})") from None
    if not isinstance(run_info, dict) or not isinstance(run_info.get("labels"), list):
        raise RunError(f"{run_dir}/run.json holds no list of labels (written by python -m train beside best.keras)")
    labels = tuple(run_info["labels"])
    if labels != data.CLASS_NAMES:
        raise ValueError(f"{run_dir}: labels {labels} differ from the data loader's {data.CLASS_NAMES}")
    try:
        model = keras.models.load_model(run_dir / "best.keras")
    except Exception as exc:  # noqa: BLE001 - Keras raises anything from a damaged archive ("File not found" too)
        first_line = (str(exc).splitlines() or [""])[0]
        raise RunError(
            f"{run_dir}/best.keras is not a model this Keras can load ({type(exc).__name__}: {first_line[:160]})"
        ) from None
    if tta == "flip":
        model = with_flip_tta(model)
    elif tta != "none":
        raise ValueError(f"tta: unknown test-time augmentation {tta!r} (none or flip)")
    root = data.resolve_data_dir(data_dir)
    train_split = data.load_split(root, "train", cache_dir)
    public = data.load_split(root, "public", cache_dir)
    private = data.load_split(root, "private", cache_dir) if ship_as is not None and "int8" in variants else None

    keras_public = model.predict(public.x[..., None].astype(np.float32), batch_size=256, verbose=0)
    keras_accuracy = float((keras_public.argmax(1) == public.y).mean())
    out_dir.mkdir(parents=True, exist_ok=True)
    results = []
    for variant in variants:
        path = out_dir / f"fer_{variant}.tflite"
        tmp = path.with_suffix(".tflite.tmp")
        try:
            tmp.write_bytes(convert_model(model, variant, train_split))
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        public_scores = tflite_scores(path, public.x)
        tflite_accuracy = float((public_scores.argmax(1) == public.y).mean())
        agreement = float((public_scores.argmax(1) == keras_public.argmax(1)).mean())
        metrics = {
            "public_accuracy": round(tflite_accuracy, 4),
            "keras_public_accuracy": round(keras_accuracy, 4),
            "keras_agreement": round(agreement, 4),
        }
        parity_lost = variant == "int8" and keras_accuracy - tflite_accuracy > MAX_INT8_DROP
        calibration, calibration_public = fit_model_calibration(path, public, public_scores)
        metrics.update(calibration_public)
        refusal = None
        if ship_as is not None and variant == "int8" and not parity_lost and not force:
            refusal = ship_refusal(tflite_accuracy, Path(ship_as))
        scores_private = private is not None and variant == "int8" and not parity_lost and refusal is None
        if scores_private and private is not None:
            private_scores = tflite_scores(path, private.x)
            metrics.update(private_calibration_metrics(path, private, calibration, private_scores))
            private_report = split_metrics(private.y, private_scores.argmax(1), labels)
            metrics.update(private_accuracy=private_report["accuracy"], private_macro_f1=private_report["macro_f1"])
            (out_dir / f"fer_{variant}_private.json").write_text(json.dumps(private_report, indent=2))
            if variant == "int8":
                plot_confusion(
                    np.array(private_report["confusion_matrix"]),
                    labels,
                    out_dir / "confusion_int8_private.png",
                    f"{run_dir.name} int8 PrivateTest",
                )
            log.info("wrote the PrivateTest report to %s", out_dir / f"fer_{variant}_private.json")
        log.info(
            "%-8s %7.1f kB  PublicTest keras %.4f tflite %.4f (delta %+.4f)  top-1 agreement %.4f%s",
            variant,
            path.stat().st_size / 1024,
            keras_accuracy,
            tflite_accuracy,
            tflite_accuracy - keras_accuracy,
            agreement,
            f"  PrivateTest {metrics['private_accuracy']:.4f}" if scores_private else "",
        )
        interpreter = make_interpreter(path)
        sidecar = ModelSidecar(
            labels=labels,
            input=tensor_spec(interpreter.get_input_details()[0]),
            output=tensor_spec(interpreter.get_output_details()[0]),
            sha256=file_sha256(path),
            variant=variant,
            face_margin=FACE_MARGIN,
            macs=tflite_macs(path),
            params=int(run_info.get("params", 0)),
            metrics=metrics,
            source={
                "run": run_dir.name,
                "model": run_info.get("model"),
                "backend": run_info.get("backend"),
                "config": run_info.get("config", str(run_dir / "config.yaml")),
                "tta": tta,
            },
            calibration=calibration,
        )
        write_sidecar(path, sidecar)
        log.info(
            "wrote %s and %s (temperature %g, mirrored %g)",
            path,
            sidecar_path(path).name,
            calibration.temperature,
            calibration.temperature_mirror,
        )
        results.append(VariantResult(variant, path, keras_accuracy, tflite_accuracy, agreement))
        if parity_lost:
            # renamed, so that nothing (make deploy-model, a glob) mistakes it for a usable model
            rejected = path.with_name(f"fer_{variant}.rejected.tflite")
            os.replace(path, rejected)
            os.replace(sidecar_path(path), sidecar_path(rejected))
            raise ParityError(
                f"int8 model loses {100 * (keras_accuracy - tflite_accuracy):.2f} points on PublicTest "
                f"(keras {keras_accuracy:.4f}, int8 {tflite_accuracy:.4f}); limit is {100 * MAX_INT8_DROP:.0f}; "
                f"kept as {rejected} for inspection"
            )
        if refusal is not None:
            raise ShipError(
                f"not shipping {path} to {ship_as}: {refusal} (FORCE=1, or --force, ships it anyway); "
                f"the candidate stays in {out_dir}"
            )
    if ship_as is not None and "int8" in variants:
        ship(out_dir / "fer_int8.tflite", Path(ship_as))
    return results


def ship(model_path: Path, target: Path) -> None:
    """Copy a model and its sidecar to ``target``: both copied in full first, then renamed into place back to back.

    Raises :class:`ShipError` when a copy cannot be written (a full disk); the shipped pair is then unchanged."""
    pairs = [(model_path, target), (sidecar_path(model_path), sidecar_path(target))]
    written: list[Path] = []
    try:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            for src, dst in pairs:
                tmp = dst.with_name(dst.name + ".tmp")
                with open(src, "rb") as source, open(tmp, "wb") as copy:
                    written.append(tmp)
                    shutil.copyfileobj(source, copy)
                    copy.flush()
                    os.fsync(copy.fileno())
        except OSError as exc:
            raise ShipError(
                f"cannot ship {model_path} to {target} ({exc.strerror or exc}); the shipped pair is as it was"
            ) from None
        # The model first, its sidecar last: a ship cut between the two leaves the new model beside the old
        # sidecar, or beside none on a first ship, and the device refuses both (sha256 mismatch, no sidecar). The
        # other order could leave a sidecar without its model, and the device would load the next model it finds.
        for tmp, (_, dst) in zip(written, pairs):
            os.replace(tmp, dst)
    finally:
        for tmp in written:
            tmp.unlink(missing_ok=True)
    log.info("shipped %s -> %s (and its %s)", model_path, target, sidecar_path(target).name)


def recalibrate(
    model_path: Path, data_dir: str | None = None, cache_dir: str = "build/cache", private: bool = False
) -> ModelSidecar:
    """Fit the calibration of an already converted model on PublicTest and rewrite its sidecar (the model
    itself is not touched); with ``private``, also score the shipped numbers on PrivateTest (once per model).

    ``private`` is refused (:class:`PrivateTestError`) for a model outside ``models/`` (a candidate is compared on
    PublicTest only) and for one whose sidecar already holds these PrivateTest numbers."""
    sidecar = read_sidecar(model_path)
    if private and model_path.resolve().parent.name != "models":
        raise PrivateTestError(
            f"{model_path}: PrivateTest is scored for a shipped model in models/ only; candidates are compared on "
            "PublicTest (make convert scores a model on PrivateTest when it ships it)"
        )
    if private and (scored := [name for name in PRIVATE_CALIBRATION_METRICS if name in sidecar.metrics]):
        raise PrivateTestError(
            f"{model_path}: its sidecar already holds PrivateTest numbers ({', '.join(scored)}): they are scored "
            "once per shipped model"
        )
    root = data.resolve_data_dir(data_dir)
    calibration, metrics = fit_model_calibration(model_path, data.load_split(root, "public", cache_dir))
    if private:
        split = data.load_split(root, "private", cache_dir)
        metrics.update(private_calibration_metrics(model_path, split, calibration))
    updated = dataclasses.replace(sidecar, metrics={**sidecar.metrics, **metrics}, calibration=calibration)
    write_sidecar(model_path, updated)
    log.info(
        "calibrated %s: temperature %g, mirrored %g; wrote %s",
        model_path,
        calibration.temperature,
        calibration.temperature_mirror,
        sidecar_path(model_path),
    )
    return updated
