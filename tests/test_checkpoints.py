"""checkpoints/: the Keras originals of the shipped models, which a later training stage starts from."""

import json

import numpy as np
import pytest

from convert.tflite import tflite_scores
from train import data


@pytest.mark.parametrize("name, shipped", [("default-cpu", "fer_int8"), ("fast-refine", "fer_fast_int8")])
def test_checkpoint_is_the_original_of_the_shipped_model(repo_root, fer2013_dir, cache_dir, name, shipped):
    import keras

    model = keras.models.load_model(repo_root / "checkpoints" / f"{name}.keras")
    sidecar = json.loads((repo_root / "models" / f"{shipped}.json").read_text())
    assert model.count_params() == sidecar["params"]
    faces = data.load_split(fer2013_dir, "public", cache_dir).head(30)  # 210 faces, every class
    keras_top = model.predict(faces.x[..., None].astype("float32"), verbose=0).argmax(1)
    int8_top = tflite_scores(repo_root / "models" / f"{shipped}.tflite", faces.x).argmax(1)
    assert np.mean(keras_top == int8_top) > 0.95


@pytest.mark.parametrize(
    "config",
    [
        "train-default-cpu.yaml",
        "train-distill.yaml",
        "train-fast-cpu.yaml",
        "train-fast-ensemble.yaml",
        "train-fast-grow.yaml",
        "train-fast-refine.yaml",
        "train-fast-wide.yaml",
    ],
)
def test_later_stages_start_from_the_checkpoints(repo_root, config):
    from train.config import load_config

    cfg = load_config(repo_root / "configs" / config)
    inits = [m.init for m in (cfg.model, *cfg.students.values()) if m.init]
    assert inits or cfg.distill.teachers, f"{config} starts from no checkpoint"
    for path in (*inits, *cfg.distill.teachers):
        assert (repo_root / path).is_file(), path
