"""A tiny real run end to end: train, evaluate (every report file), convert, and check the contract."""

import json

import numpy as np
import pytest

from fer_edge.contract import read_sidecar
from train import data
from train.config import ConfigError, load_config

REPORT_FILES = (
    "best.keras", "last.keras", "history.csv", "history.json", "learning_curves.png", "metrics.json",
    "metrics.csv", "report_public.txt", "report_private.txt", "per_class_public.json",
    "per_class_private.json", "confusion_public.png", "confusion_private.png", "config.yaml", "run.json",
)


def tiny_overrides(output_dir, epochs):
    """A few hundred images, a few epochs, a model of a few thousand weights: seconds on a CPU."""
    return {
        "run_name": "tiny", "output_dir": str(output_dir), "epochs": epochs, "limit_per_class": 100,
        "batch_size": 32, "schedule.warmup_epochs": 0, "schedule.name": "constant", "optimizer.learning_rate": 3e-3,
        "model.params": {"widths": [8, 16], "dense": 32, "dropout": 0.1, "bn_momentum": 0.8},
    }


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from train.evaluate import evaluate_run
    from train.fit import train

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, tiny_overrides(out, epochs=3))
    run_dir = train(cfg)
    summary = evaluate_run(run_dir, cfg.data, cfg.cache_dir)
    return run_dir, summary


def test_tiny_run_writes_every_report(tiny_run):
    run_dir, summary = tiny_run
    for name in REPORT_FILES:
        assert (run_dir / name).is_file() and (run_dir / name).stat().st_size > 0, name
    for png in run_dir.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_trained"] == 3
    assert set(metrics) >= {"public", "private", "macs", "params", "best_epoch_on_public"}
    per_class = json.loads((run_dir / "per_class_private.json").read_text())
    assert list(per_class) == list(data.CLASS_NAMES)
    assert sum(c["support"] for c in per_class.values()) == 3589
    report = (run_dir / "report_private.txt").read_text()
    assert "macro f1" in report and "disgust" in report


def test_evaluation_compares_predictions_in_label_order(tiny_run, fer2013_dir, cache_dir):
    """Accuracy recomputed from the confusion matrix equals the model's own on the ordered split."""
    import keras

    run_dir, summary = tiny_run
    model = keras.models.load_model(run_dir / "best.keras")
    public = data.load_split(fer2013_dir, "public", cache_dir)
    predicted = model.predict(public.x[..., None].astype("float32"), verbose=0).argmax(1)
    assert summary["public"]["accuracy"] == pytest.approx((predicted == public.y).mean(), abs=1e-4)
    assert summary["public"]["accuracy"] > 0.2  # a few short epochs already beat chance (1/7)


def test_resume_continues_from_last_epoch(tiny_run):
    from train.fit import read_history, train

    run_dir, _ = tiny_run
    train(load_config(None, tiny_overrides(run_dir.parent, epochs=4)), resume=True)
    assert [int(row["epoch"]) for row in read_history(run_dir)] == [0, 1, 2, 3]


def test_conversion_parity_and_sidecar(tiny_run, fer2013_dir, tmp_path):
    from convert.tflite import VARIANTS, convert_run, tflite_scores

    run_dir, _ = tiny_run
    shipped = tmp_path / "models" / "fer_int8.tflite"
    results = convert_run(run_dir, tmp_path / "tflite", VARIANTS, fer2013_dir, ship_as=shipped)
    assert [r.variant for r in results] == list(VARIANTS)
    for r in results:
        assert r.agreement > 0.9, r
        assert abs(r.tflite_accuracy - r.keras_accuracy) < 0.02, r
    sidecar = read_sidecar(shipped)
    assert sidecar.labels == data.CLASS_NAMES
    assert sidecar.input.dtype == "uint8" and sidecar.input.shape == (1, 48, 48, 1)
    assert (sidecar.input.scale, sidecar.input.zero_point) == (1.0, 0)  # raw pixels, rescaling inside the model
    assert sidecar.metrics["public_accuracy"] == pytest.approx(results[-1].tflite_accuracy, abs=1e-4)
    assert 0 < sidecar.metrics["private_accuracy"] <= 1
    # PrivateTest is scored for the shipped int8 model only, not for the variants converted beside it
    assert sorted(p.name for p in (tmp_path / "tflite").glob("*private*")) == [
        "confusion_int8_private.png", "fer_int8_private.json"]
    assert "private_accuracy" not in read_sidecar(tmp_path / "tflite" / "fer_float32.tflite").metrics
    # raw uint8 pixels in, scores out that sum to about one
    public = data.load_split(fer2013_dir, "public")
    scores = tflite_scores(shipped, public.x[:20])
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=0.03)


def test_model_failing_int8_parity_is_neither_shipped_nor_scored_on_private(tiny_run, fer2013_dir, tmp_path,
                                                                           monkeypatch):
    import convert.tflite
    from convert.tflite import ParityError, convert_run

    run_dir, _ = tiny_run
    monkeypatch.setattr(convert.tflite, "MAX_INT8_DROP", -1.0)  # any int8 model now fails parity
    shipped = tmp_path / "models" / "fer_int8.tflite"
    with pytest.raises(ParityError, match="int8 model loses"):
        convert_run(run_dir, tmp_path / "tflite", ("int8",), fer2013_dir, ship_as=shipped)
    assert not shipped.exists()
    assert not list((tmp_path / "tflite").glob("*private*"))
    assert "private_accuracy" not in read_sidecar(tmp_path / "tflite" / "fer_int8.tflite").metrics


def test_config_rejects_unknown_keys_with_their_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer: {name: sgd, learnin_rate: 0.1}\n")
    with pytest.raises(ConfigError, match=r"optimizer\.learnin_rate: unknown key"):
        load_config(bad)
    bad.write_text("epochs: many\n")
    with pytest.raises(ConfigError, match=r"epochs: expected"):
        load_config(bad)


def test_seed_architecture_is_available():
    from train.models import build_model, count_macs

    seed = build_model("seed")
    assert seed.output_shape == (None, len(data.CLASS_NAMES))
    assert count_macs(seed) > 0


def test_separable_model_trains_and_converts_to_int8_at_its_counted_macs(fer2013_dir, tmp_path):
    """sep_bn (depthwise + pointwise convolutions): the TFLite graph's MACs are the ones Keras
    counts, and its int8 model agrees with Keras after a short real run."""
    import keras

    from convert.tflite import convert_run, tflite_macs
    from train.fit import train
    from train.models import count_macs

    overrides = tiny_overrides(tmp_path / "runs", epochs=3)
    overrides.update({"model.name": "sep_bn", "model.params": {"widths": [8, 16], "dense": 32, "dropout": 0.1,
                                                               "bn_momentum": 0.8}})
    run_dir = train(load_config(None, overrides))
    model = keras.models.load_model(run_dir / "best.keras")
    assert any(isinstance(layer, keras.layers.DepthwiseConv2D) for layer in model.layers)
    int8 = convert_run(run_dir, tmp_path / "tflite", ("int8",), fer2013_dir)[0]
    assert tflite_macs(int8.path) == count_macs(model) == read_sidecar(int8.path).macs
    assert int8.agreement > 0.9 and abs(int8.tflite_accuracy - int8.keras_accuracy) < 0.02, int8


def test_flip_tta_is_one_symmetric_model_of_twice_the_macs(tiny_run, fer2013_dir, tmp_path):
    from convert.tflite import convert_run, tflite_macs, tflite_scores

    run_dir, _ = tiny_run
    plain = convert_run(run_dir, tmp_path / "plain", ("int8",), fer2013_dir)[0]
    tta = convert_run(run_dir, tmp_path / "tta", ("int8",), fer2013_dir, tta="flip")[0]
    assert tflite_macs(tta.path) == 2 * tflite_macs(plain.path)
    assert tta.agreement > 0.9
    faces = data.load_split(fer2013_dir, "public").x[:30]
    # averaging a face with its mirror image makes the model blind to the mirroring
    np.testing.assert_allclose(tflite_scores(tta.path, faces), tflite_scores(tta.path, faces[:, :, ::-1]), atol=0.02)
    assert read_sidecar(tta.path).source["tta"] == "flip"
    # candidates converted for comparison (not shipped) are scored on PublicTest only
    assert "private_accuracy" not in read_sidecar(tta.path).metrics
    assert not list((tmp_path / "tta").glob("*private*"))
