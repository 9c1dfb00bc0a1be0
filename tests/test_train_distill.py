"""Online and offline distillation, the time budget, and the augmentation geometry, on real faces."""

import json

import numpy as np
import pytest
import yaml

from train import data
from train.augment import AugmentConfig, augment_batch
from train.config import ConfigError, load_config

TINY_MAIN = {"widths": [8, 16], "dense": 32, "dropout": 0.1, "bn_momentum": 0.8}
TINY_STUDENT = {"widths": [4, 8], "dense": 16, "dropout": 0.1, "bn_momentum": 0.8}


def tiny(output_dir, **extra):
    overrides = {
        "run_name": "big",
        "output_dir": str(output_dir),
        "epochs": 2,
        "limit_per_class": 60,
        "batch_size": 32,
        "schedule.warmup_epochs": 0,
        "optimizer.learning_rate": 3e-3,
        "model.params": TINY_MAIN,
        "students": {"small": {"name": "vgg_bn", "params": TINY_STUDENT}},
    }
    return load_config(None, {**overrides, **extra})


@pytest.fixture(scope="module")
def online_run(tmp_path_factory):
    from train.fit import train

    cfg = tiny(tmp_path_factory.mktemp("runs"), precision="mixed_bfloat16")
    train(cfg)
    return cfg


def test_students_train_beside_the_main_model_in_their_own_run_folders(online_run):
    import keras

    from train.fit import read_history
    from train.models import build_model

    for run, params in (("big", TINY_MAIN), ("small", TINY_STUDENT)):
        run_dir = online_run.run_dir.parent / run
        history = read_history(run_dir)
        assert [int(row["epoch"]) for row in history] == [0, 1]
        assert all(0.0 < row["val_accuracy"] <= 1.0 and row["loss"] > 0 for row in history)
        model = keras.models.load_model(run_dir / "best.keras")
        assert model.count_params() == build_model("vgg_bn", **params).count_params()
        assert model.dtype_policy.name == "float32"
        assert yaml.safe_load((run_dir / "config.yaml").read_text())["epochs"] == 2
    from train.fit import has_gpu

    info = json.loads((online_run.run_dir.parent / "small" / "run.json").read_text())
    assert info["distilled_from"] == "big"
    # bfloat16 only where a GPU runs it; the exported model is float32 either way
    assert info["precision"] == ("mixed_bfloat16" if has_gpu() else "float32")
    # the main model learns from the labels only; the student from the labels and the main model
    big, small = (read_history(online_run.run_dir.parent / r) for r in ("big", "small"))
    assert big[0]["loss"] != small[0]["loss"]


def test_trainer_wires_a_distillation_output_per_student(online_run):
    from train.fit import build_trainer

    trainer, nets = build_trainer(online_run)
    assert list(nets) == ["big", "small"]
    assert sorted(trainer.output) == ["big", "small", "small_distill"]
    assert trainer.output["small_distill"].shape == (None, 2 * len(data.CLASS_NAMES))


def test_distillation_loss_vanishes_only_where_student_agrees_with_teacher():
    from train.fit import DistillationLoss

    loss = DistillationLoss(temperature=4.0)
    teacher = np.array([[0.7, 0.1, 0.05, 0.05, 0.04, 0.03, 0.03]], "float32")
    student = np.array([[0.1, 0.7, 0.05, 0.05, 0.04, 0.03, 0.03]], "float32")
    same = float(loss(teacher, np.concatenate([teacher, teacher], 1)))
    apart = float(loss(teacher, np.concatenate([student, teacher], 1)))
    assert same == pytest.approx(0.0, abs=1e-5)
    assert apart > 0.1


def test_frozen_teacher_starts_and_teaches_students_and_stays_frozen(online_run, fer2013_dir, cache_dir, tmp_path):
    import keras

    from train.fit import build_trainer, compile_trainer, one_hot

    teacher_path = str(online_run.run_dir / "best.keras")
    cfg = tiny(tmp_path, **{"model.init": teacher_path, "distill.teachers": [teacher_path], "distill.weight": 0.7})
    trainer, nets = build_trainer(cfg)
    compile_trainer(trainer, cfg)
    assert sorted(trainer.output) == ["big", "big_distill", "small", "small_distill"]

    faces = data.load_split(fer2013_dir, "public", cache_dir).head(8)
    x = faces.x[..., None].astype("float32")
    teacher = keras.models.load_model(teacher_path)
    np.testing.assert_allclose(nets["big"].predict(x, verbose=0), teacher.predict(x, verbose=0), atol=1e-5)

    frozen = [layer for layer in trainer.layers if layer.name.startswith("teacher0")]
    assert frozen and not frozen[0].trainable_weights
    before = [w.copy() for w in frozen[0].get_weights()]
    y = one_hot(faces.y)
    trainer.train_on_batch(x, {name: y for name in trainer.output})
    assert all(np.array_equal(a, b) for a, b in zip(before, frozen[0].get_weights()))
    assert not np.allclose(nets["big"].predict(x, verbose=0), teacher.predict(x, verbose=0), atol=1e-5)


def test_time_budget_fixes_the_epoch_count_once_and_records_it(tmp_path, monkeypatch):
    from train import fit

    cfg = load_config(None, {"epochs": 100, "schedule.warmup_epochs": 2})
    clock = iter(range(0, 10_000, 10))  # every epoch takes 10 s
    monkeypatch.setattr(fit.time, "monotonic", lambda: float(next(clock)))
    (tmp_path / "run.json").write_text(json.dumps({"model": "vgg_bn", "config": "configs/train-default.yaml"}))
    plan = fit.EpochPlan(cfg, deadline=300.0, run_dirs=[tmp_path])
    callback = fit.BudgetCallback(plan, first_epoch=0)
    callback.set_model(type("Model", (), {"stop_training": False})())
    peak_before = plan.learning_rate(2)
    epoch = 0
    while not callback.model.stop_training:
        callback.on_epoch_end(epoch)
        epoch += 1
    # three epochs timed at 10 s, about 270 s left at 90%: 24 more
    assert plan.epochs == epoch == 27
    assert yaml.safe_load((tmp_path / "config.yaml").read_text())["epochs"] == 27
    # configs/train-default.yaml would train 100 epochs: the run's own config.yaml is the one that reproduces it
    assert json.loads((tmp_path / "run.json").read_text()) == {
        "model": "vgg_bn",
        "config": str(tmp_path / "config.yaml"),
    }
    # warm-up and the first cosine epoch do not depend on the total, so the decision changes no past step
    assert plan.learning_rate(2) == peak_before == cfg.optimizer.learning_rate
    assert plan.learning_rate(26) < 0.01 * cfg.optimizer.learning_rate


def test_config_checks_students_and_teachers_by_key_path(repo_root):
    with pytest.raises(ConfigError, match=r"students\.small\.widths: unknown key"):
        load_config(None, {"students": {"small": {"widths": [4]}}})
    with pytest.raises(ConfigError, match=r"students\.default: a student needs its own run name"):
        load_config(None, {"students": {"default": {"name": "vgg_bn"}}})
    with pytest.raises(ConfigError, match=r"students: expected a mapping of names to ModelConfigs"):
        load_config(None, {"students": ["small"]})
    assert load_config(None, {"students": {"small": {"params": {"widths": [4]}}}}).students["small"].name == "vgg_bn"
    with pytest.raises(ConfigError, match=r"distill\.teachers: expected"):
        load_config(None, {"distill.teachers": [1, 2]})
    teacher = str(repo_root / "checkpoints" / "default.keras")
    assert load_config(None, {"distill.teachers": [teacher]}).distill.teachers == (teacher,)
    with pytest.raises(ConfigError, match=r"distill\.teachers: cannot read a\.keras \(No such file or directory\)"):
        load_config(None, {"distill.teachers": [teacher, "a.keras"]})


def test_augmentation_geometry_on_real_faces(fer2013_dir, cache_dir):
    faces = data.load_split(fer2013_dir, "public", cache_dir).x[:64]
    rng = np.random.default_rng(0)
    still = dict(rotation=0.0, shear=0.0, zoom=0.0, shift=0.0, erasing=0.0)
    np.testing.assert_array_equal(augment_batch(faces, rng, AugmentConfig(flip=False, **still)), faces)
    mirrored = augment_batch(faces, rng, AugmentConfig(flip=True, **still))
    kept = [np.array_equal(m, f) for m, f in zip(mirrored, faces)]
    flipped = [np.array_equal(m, f[:, ::-1]) for m, f in zip(mirrored, faces)]
    assert all(k or f for k, f in zip(kept, flipped)) and 16 < sum(flipped) < 48
    moved = augment_batch(faces, rng, AugmentConfig())
    assert moved.shape == faces.shape and moved.dtype == np.uint8
    assert np.mean([not np.array_equal(m, f) for m, f in zip(moved, faces)]) > 0.95


def test_interrupted_run_with_students_resumes_from_its_last_checkpoint(tmp_path, monkeypatch):
    from train import fit

    cfg = tiny(tmp_path, epochs=4, checkpoint_every=2)
    original = fit.EpochLog.on_epoch_end

    def interrupt_after_third_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(fit.EpochLog, "on_epoch_end", interrupt_after_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        fit.train(cfg)
    main, student = tmp_path / "big", tmp_path / "small"
    assert json.loads((main / fit.LAST_EPOCH).read_text())["epochs"] == 2  # saved every 2nd epoch
    assert len(fit.read_history(student)) == 3

    monkeypatch.setattr(fit.EpochLog, "on_epoch_end", original)
    # the checkpoint replaces any starting weights, so a resume does not read model.init (here no model)
    (tmp_path / "broken.keras").write_bytes(b"not a model")
    fit.train(
        tiny(tmp_path, epochs=4, checkpoint_every=2, **{"model.init": str(tmp_path / "broken.keras")}), resume=True
    )
    for run_dir in (main, student):  # the third epoch was trained again from the checkpoint, once
        assert [int(row["epoch"]) for row in fit.read_history(run_dir)] == [0, 1, 2, 3]
        assert (run_dir / "best.keras").is_file()
    assert json.loads((main / fit.LAST_EPOCH).read_text())["epochs"] == 4
    assert yaml.safe_load((main / "config.yaml").read_text())["model"]["init"] is None  # as it was trained


def test_a_resumed_epoch_sees_the_same_batches_as_an_uninterrupted_one(fer2013_dir, cache_dir):
    from train.fit import AugmentedSequence

    split = data.load_split(fer2013_dir, "public", cache_dir).head(40)
    cfg = load_config(None, {"batch_size": 32})
    running = AugmentedSequence(split, cfg, ["default"], epoch=0)
    first_epoch = running[1][0]
    running.on_epoch_end()
    running.on_epoch_end()
    resumed = AugmentedSequence(split, cfg, ["default"], epoch=2)
    np.testing.assert_array_equal(running[1][0], resumed[1][0])
    assert not np.array_equal(first_epoch, resumed[1][0])  # and each epoch draws anew


def test_camera_degradations_change_every_face_they_are_drawn_for(fer2013_dir, cache_dir):
    faces = data.load_split(fer2013_dir, "public", cache_dir).x[:32]
    still = dict(rotation=0.0, shear=0.0, zoom=0.0, shift=0.0, flip=False, erasing=0.0)
    for name in ("blur", "downscale", "noise", "jpeg"):
        out = augment_batch(faces, np.random.default_rng(1), AugmentConfig(**still, **{name: 1.0}))
        assert out.dtype == np.uint8 and out.shape == faces.shape
        assert all(not np.array_equal(o, f) for o, f in zip(out, faces)), name
        # a degradation, not a new picture: the face stays close to itself
        assert np.abs(out.astype(int) - faces).mean() < 12, name


def test_compacted_model_is_half_the_size_and_scores_the_same(online_run, fer2013_dir, cache_dir, tmp_path):
    import keras

    from tools.compact_keras import compact

    original = online_run.run_dir / "best.keras"
    compacted = tmp_path / "small.keras"
    compact(original, compacted)
    assert compacted.stat().st_size < 0.7 * original.stat().st_size  # the config is not compacted
    x = data.load_split(fer2013_dir, "public", cache_dir).x[:200, ..., None].astype("float32")
    expected = keras.models.load_model(original).predict(x, verbose=0)
    np.testing.assert_allclose(keras.models.load_model(compacted).predict(x, verbose=0), expected, atol=0.01)


def test_a_restored_checkpoint_keeps_weights_optimizer_state_and_decay_exclusions(tmp_path, fer2013_dir, cache_dir):
    import keras

    from train import fit

    cfg = tiny(tmp_path, data=str(fer2013_dir), cache_dir=str(cache_dir))
    split = data.load_split(fer2013_dir, "train", cfg.cache_dir).head(10, 0)
    trainer, _ = fit.build_trainer(cfg)
    fit.compile_trainer(trainer, cfg)
    trainer.fit(fit.AugmentedSequence(split, cfg, list(trainer.output)), epochs=1, verbose=0)
    trainer.save(tmp_path / fit.LAST)

    restored, nets = fit.build_trainer(cfg)
    fit.compile_trainer(restored, cfg)
    fit.restore_checkpoint(restored, tmp_path / fit.LAST)
    assert int(restored.optimizer.iterations) == int(trainer.optimizer.iterations) > 0
    for saved, loaded in zip(
        trainer.optimizer.variables + trainer.weights, restored.optimizer.variables + restored.weights
    ):
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(saved), keras.ops.convert_to_numpy(loaded))
    # Keras keeps these exclusions out of the saved file; a trainer loaded whole would decay them
    norm = next(layer for layer in nets["big"].layers if isinstance(layer, keras.layers.BatchNormalization))
    conv = next(layer for layer in nets["big"].layers if isinstance(layer, keras.layers.Conv2D))
    assert not restored.optimizer._use_weight_decay(norm.gamma)
    assert restored.optimizer._use_weight_decay(conv.kernel)
    assert keras.models.load_model(tmp_path / fit.LAST).optimizer._use_weight_decay(norm.gamma)


def test_a_grown_model_starts_as_its_narrow_checkpoint_and_its_added_channels_can_learn(
    repo_root, fer2013_dir, cache_dir, tmp_path
):
    """model.grow: the shipped fast model's checkpoint widened to 16-32-72-144 channels scores every
    face as the checkpoint does; the added channels read the old ones and nothing reads them yet."""
    import keras

    from train.fit import build_trainer
    from train.models import build_model, grow_from

    init = repo_root / "checkpoints" / "fast.keras"
    narrow = keras.models.load_model(init)
    cfg = load_config(
        None,
        {
            "run_name": "fast",
            "output_dir": str(tmp_path),
            "model.params": {"widths": [16, 32, 72, 144], "dense": 256, "dropout": 0.3},
            "model.init": str(init),
            "model.grow": True,
        },
    )
    _, nets = build_trainer(cfg)
    wide = nets["fast"]
    faces = data.load_split(fer2013_dir, "public", cache_dir).x[:64, ..., None].astype("float32")
    np.testing.assert_allclose(wide.predict(faces, verbose=0), narrow.predict(faces, verbose=0), atol=1e-5)

    added = wide.get_layer("s2_conv0").get_weights()[0][..., 64:]  # the stage's added output channels
    assert np.abs(added).sum() > 0  # they read the old channels, so gradients reach them
    reading_added = wide.get_layer("s2_conv1").get_weights()[0][:, :, 64:, :]
    assert not reading_added.any()
    # the separable design too (depthwise kernels read only their own channel)
    narrow_sep = build_model("sep_bn", widths=[8, 16], dense=16)
    wide_sep = build_model("sep_bn", widths=[12, 24], dense=32)
    grow_from(wide_sep, narrow_sep)
    np.testing.assert_allclose(wide_sep.predict(faces, verbose=0), narrow_sep.predict(faces, verbose=0), atol=1e-5)
    with pytest.raises(ValueError, match="differ in their layers"):
        grow_from(build_model("vgg_bn", widths=[16, 32, 72, 144], convs_per_stage=3), narrow)
