"""A tiny real run end to end: train, evaluate (every report file), convert, and check the contract."""

import json
import logging
import shutil
import sys

import numpy as np
import pytest
import yaml
from disklimit import error_lines_under_file_size_limit

from fer_edge.contract import read_sidecar
from train import data
from train.config import ConfigError, load_config, to_dict

# PublicTest only: PrivateTest is scored by the conversion, once, for the shipped int8 model
REPORT_FILES = (
    "best.keras",
    "last.keras",
    "history.csv",
    "history.json",
    "learning_curves.png",
    "metrics.json",
    "metrics.csv",
    "report_public.txt",
    "per_class_public.json",
    "confusion_public.png",
    "config.yaml",
    "run.json",
)


def tiny_overrides(output_dir, epochs):
    """A few hundred images, a few epochs, a model of a few thousand weights: seconds on a CPU."""
    return {
        "run_name": "tiny",
        "output_dir": str(output_dir),
        "epochs": epochs,
        "limit_per_class": 100,
        "batch_size": 32,
        "schedule.warmup_epochs": 0,
        "schedule.name": "constant",
        "optimizer.learning_rate": 3e-3,
        "model.params": {"widths": [8, 16], "dense": 32, "dropout": 0.1, "bn_momentum": 0.8},
    }


@pytest.fixture(scope="module")
def tiny_run_splits():
    """The splits the tiny run's training and evaluation loaded, in order."""
    return []


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, tiny_run_splits):
    from train.evaluate import evaluate_run
    from train.fit import train

    load_split = data.load_split

    def recording_load_split(root, split, *args, **kwargs):
        tiny_run_splits.append(split)
        return load_split(root, split, *args, **kwargs)

    out = tmp_path_factory.mktemp("runs")
    cfg = load_config(None, tiny_overrides(out, epochs=3))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(data, "load_split", recording_load_split)
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
    assert set(metrics) >= {"public", "macs", "params", "best_epoch_on_public"}
    per_class = json.loads((run_dir / "per_class_public.json").read_text())
    assert list(per_class) == list(data.CLASS_NAMES)
    assert sum(c["support"] for c in per_class.values()) == 3589
    report = (run_dir / "report_public.txt").read_text()
    assert report.startswith("PublicTest (3589 images)") and "disgust" in report
    macro = next(line.split() for line in report.splitlines() if line.strip().startswith("macro avg"))
    assert float(macro[4]) == pytest.approx(
        json.loads((run_dir / "metrics.json").read_text())["public"]["macro_f1"], abs=1e-4
    )
    assert int(macro[5]) == 3589


def test_training_and_evaluation_never_load_private_test(tiny_run, tiny_run_splits):
    """Protocol: candidates are chosen on PublicTest; PrivateTest is scored once, by the conversion of
    the shipped int8 model, never by training or its evaluation."""
    run_dir, summary = tiny_run
    assert set(tiny_run_splits) == {"train", "public"}, tiny_run_splits
    assert not list(run_dir.glob("*private*"))
    assert "private" not in summary and "private" not in json.loads((run_dir / "metrics.json").read_text())
    assert (run_dir / "metrics.csv").read_text().split() == [
        "split,accuracy,macro_f1",
        f"public,{summary['public']['accuracy']},{summary['public']['macro_f1']}",
    ]


@pytest.mark.parametrize("budget", ["0", "-5", "inf", "nan", "ten"])
def test_a_time_budget_that_cannot_be_met_is_refused_before_training(budget, tmp_path, capsys):
    """inf and nan used to pass, train the first epochs, then end in a traceback when the budget was applied."""
    from train.__main__ import main

    with pytest.raises(SystemExit) as refused:
        main(["--time-budget", budget, "--data", str(tmp_path / "no-data"), "--output-dir", str(tmp_path / "runs")])
    assert refused.value.code == 2
    said = capsys.readouterr().err.splitlines()[-1]
    assert said.startswith("python -m train: error: argument --time-budget: expected a"), said
    assert not (tmp_path / "runs").exists()


def test_train_cli_evaluates_each_run_on_public_test_only_and_names_it(tiny_run, tmp_path, monkeypatch, caplog):
    """``python -m train --export`` (and so every ``python -m train``) writes PublicTest reports
    only, never loads PrivateTest, and its log lines say which run they score."""
    from train.__main__ import main

    run_dir, _ = tiny_run
    copy = tmp_path / "tinycopy"
    copy.mkdir()
    for name in ("best.weights.h5", "run.json", "history.csv"):
        shutil.copy(run_dir / name, copy / name)
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    config.update(run_name="tinycopy", output_dir=str(tmp_path))
    (tmp_path / "tinycopy.yaml").write_text(yaml.safe_dump(config))
    load_split = data.load_split

    def public_only(root, split, *args, **kwargs):
        assert split != "private", "python -m train loaded PrivateTest"
        return load_split(root, split, *args, **kwargs)

    monkeypatch.setattr(data, "load_split", public_only)
    caplog.set_level(logging.INFO, logger="train.evaluate")
    assert main(["--config", str(tmp_path / "tinycopy.yaml"), "--export"]) == 0
    assert (copy / "best.keras").is_file() and (copy / "report_public.txt").is_file()
    assert not list(copy.glob("*private*"))
    scored = [r.getMessage() for r in caplog.records if r.name == "train.evaluate" and "accuracy" in r.getMessage()]
    assert len(scored) == 1 and "tinycopy" in scored[0] and "PublicTest" in scored[0], scored


def test_export_of_a_run_not_trained_is_one_error_line(tmp_path, capsys):
    from train.__main__ import main

    (tmp_path / "empty").mkdir()  # a run stopped before its first epoch ended
    for run_name in ("nosuch", "empty"):
        assert main(["--output-dir", str(tmp_path), "--run-name", run_name, "--export"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {tmp_path / run_name / 'best.weights.h5'} not found:"), err
    assert [p.name for p in tmp_path.iterdir()] == ["empty"]


def test_evaluation_compares_predictions_in_label_order(tiny_run, fer2013_dir, cache_dir):
    """Accuracy recomputed from the confusion matrix equals the model's own on the ordered split."""
    import keras

    run_dir, summary = tiny_run
    model = keras.models.load_model(run_dir / "best.keras")
    public = data.load_split(fer2013_dir, "public", cache_dir)
    predicted = model.predict(public.x[..., None].astype("float32"), verbose=0).argmax(1)
    assert summary["public"]["accuracy"] == pytest.approx((predicted == public.y).mean(), abs=1e-4)
    assert summary["public"]["accuracy"] > 0.2  # a few short epochs already beat chance (1/7)


def test_resume_continues_from_last_epoch(tiny_run, tmp_path):
    from train.fit import read_history, train

    run_dir, _ = tiny_run
    runs = tmp_path / "runs"  # a copy: the module's run stays the 3-epoch run the other tests read
    shutil.copytree(run_dir.parent, runs)
    train(load_config(None, tiny_overrides(runs, epochs=4)), resume=True)
    assert [int(row["epoch"]) for row in read_history(runs / run_dir.name)] == [0, 1, 2, 3]
    assert [int(row["epoch"]) for row in read_history(run_dir)] == [0, 1, 2]


def test_an_interrupted_run_resumes_to_the_numbers_of_one_never_stopped(tiny_run, tmp_path, monkeypatch):
    """Every draw of a resumed run is the one the run would have made: the augmented batches and dropout's masks,
    whose generators a saved model leaves out (they restarted at the first epoch's masks)."""
    from train import fit

    run_dir, _ = tiny_run  # the same recipe, trained its 3 epochs in one go
    original = fit.EpochLog.on_epoch_end

    def interrupt_after_first_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        if epoch == 0:
            raise KeyboardInterrupt

    monkeypatch.setattr(fit.EpochLog, "on_epoch_end", interrupt_after_first_epoch)
    cfg = load_config(None, tiny_overrides(tmp_path / "runs", epochs=3))
    with pytest.raises(KeyboardInterrupt):
        fit.train(cfg)
    assert len(fit.read_history(tmp_path / "runs" / "tiny")) == 1
    monkeypatch.setattr(fit.EpochLog, "on_epoch_end", original)
    fit.train(cfg, resume=True)
    assert fit.read_history(tmp_path / "runs" / "tiny") == fit.read_history(run_dir)
    assert (tmp_path / "runs" / "tiny" / fit.HISTORY).read_bytes() == (run_dir / fit.HISTORY).read_bytes()


def test_a_finished_run_trained_again_says_it_is_done(tiny_run, tmp_path, caplog):
    """make train on a finished run used to say it was resuming at an epoch past its last."""
    from train.fit import LAST, read_history, train

    run_dir, _ = tiny_run
    runs = tmp_path / "runs"
    shutil.copytree(run_dir.parent, runs)
    checkpoint = (runs / run_dir.name / LAST).read_bytes()
    with caplog.at_level(logging.INFO, logger="train.fit"):
        train(load_config(None, tiny_overrides(runs, epochs=3)), resume=True)
    assert f"{runs / run_dir.name} has trained 3 of 3 epochs: nothing to train" in caplog.text
    assert "resuming" not in caplog.text
    assert read_history(runs / run_dir.name) == read_history(run_dir)
    assert (runs / run_dir.name / LAST).read_bytes() == checkpoint


def test_resume_refuses_a_changed_recipe_in_one_line_naming_what_changed(tiny_run, tmp_path, capsys):
    """Only the epochs and where things are may change on a resume: the run's config.yaml and run.json
    would otherwise record a recipe it was not trained with (or the checkpoint not fit the model)."""
    from train.__main__ import main

    run_dir, _ = tiny_run
    runs = tmp_path / "runs"
    shutil.copytree(run_dir.parent, runs)
    copy = runs / run_dir.name
    before = {name: (copy / name).read_bytes() for name in ("config.yaml", "run.json", "history.csv", "last.keras")}
    config = yaml.safe_load(before["config.yaml"])
    config.update(output_dir=str(runs), epochs=5)
    config["model"]["params"]["widths"] = [8, 24]
    config["optimizer"]["learning_rate"] = 0.05
    (tmp_path / "edited.yaml").write_text(yaml.safe_dump(config))
    assert main(["--config", str(tmp_path / "edited.yaml"), "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(
        f"error: cannot resume {copy}: model.params.widths, optimizer.learning_rate differ from its config.yaml"
    )
    assert {name: (copy / name).read_bytes() for name in before} == before


def test_a_fresh_run_never_replaces_a_trained_one_in_its_folder(tiny_run, tmp_path, capsys):
    """Training again without --resume (a quick check with --epochs 1, say) used to start afresh over a finished
    run: its best.keras, history and reports replaced by the new run's, without a word."""
    from train.__main__ import main

    run_dir, _ = tiny_run
    runs = tmp_path / "runs"
    shutil.copytree(run_dir.parent, runs)
    copy = runs / run_dir.name
    before = {path.name: path.read_bytes() for path in copy.iterdir()}
    recipe = yaml.safe_load((copy / "config.yaml").read_text())
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump({**recipe, "output_dir": str(runs)}))
    assert main(["--config", str(tmp_path / "recipe.yaml"), "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: {copy} holds a trained run: continue it with --resume (make train does), train this one under "
        f"another --run-name or --output-dir, or remove {copy} to train it again from the start"
    ]
    assert {path.name: path.read_bytes() for path in copy.iterdir()} == before


def test_a_resume_with_no_checkpoint_replaces_only_a_run_of_the_same_recipe(tiny_run, tmp_path, capsys):
    """A run folder with trained weights but no checkpoint: this recipe's run stopped before its first
    checkpoint (trained again from the start), or another recipe's (a student of another config) left alone."""
    from train.__main__ import main
    from train.fit import LAST, LAST_EPOCH, read_history

    run_dir, _ = tiny_run
    runs = tmp_path / "runs"
    shutil.copytree(run_dir.parent, runs)
    copy = runs / run_dir.name
    (copy / LAST).unlink()
    (copy / LAST_EPOCH).unlink()
    before = {path.name: path.read_bytes() for path in copy.iterdir()}
    recipe = {**yaml.safe_load((copy / "config.yaml").read_text()), "output_dir": str(runs)}
    (tmp_path / "other.yaml").write_text(yaml.safe_dump({**recipe, "batch_size": 16}))
    assert main(["--config", str(tmp_path / "other.yaml"), "--resume", "--no-eval"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: cannot resume {copy}: batch_size differ"), err
    assert {path.name: path.read_bytes() for path in copy.iterdir()} == before

    (tmp_path / "same.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["--config", str(tmp_path / "same.yaml"), "--resume", "--no-eval", "--epochs", "1"]) == 0
    assert [int(row["epoch"]) for row in read_history(copy)] == [0]


def test_a_checkpoint_the_disk_cannot_take_keeps_the_last_one_and_is_one_error_line(
    repo_root, fer2013_dir, cache_dir, tmp_path
):
    """A full disk while last.keras is saved (here a file-size limit): one error line, and the previous
    checkpoint still whole, so the run resumes from it."""
    from train.fit import BEST_WEIGHTS, LAST, read_history, train

    settings = {**tiny_overrides(tmp_path / "runs", epochs=1), "data": str(fer2013_dir), "cache_dir": str(cache_dir)}
    train(load_config(None, settings))
    run_dir = tmp_path / "runs" / "tiny"
    checkpoint = (run_dir / LAST).read_bytes()
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(to_dict(load_config(None, settings))))
    limit = ((run_dir / BEST_WEIGHTS).stat().st_size + len(checkpoint)) // 2  # the weights fit, last.keras not

    errors = error_lines_under_file_size_limit(
        [sys.executable, "-m", "train", "--config", str(config), "--epochs", "2", "--resume", "--no-eval"],
        limit,
        repo_root,
    )
    assert errors == [f"error: {run_dir / LAST}: File too large"], errors
    assert (run_dir / LAST).read_bytes() == checkpoint
    assert not list(run_dir.glob("*partial*"))

    train(load_config(None, {**settings, "epochs": 2}), resume=True)
    assert [int(row["epoch"]) for row in read_history(run_dir)] == [0, 1]


def test_reports_the_disk_cannot_take_keep_the_previous_ones_and_are_one_error_line(
    repo_root, tiny_run, fer2013_dir, cache_dir, tmp_path
):
    """make evaluate on a full disk (here a file-size limit) used to end in a traceback, leaving the confusion
    matrix cut short in place of the previous one."""
    run_dir, _ = tiny_run
    copy = tmp_path / run_dir.name
    shutil.copytree(run_dir, copy)
    data.load_split(fer2013_dir, "public", cache_dir)  # cached: the evaluation only reads it
    before = {path.name: path.read_bytes() for path in copy.iterdir()}
    limit = (copy / "confusion_public.png").stat().st_size // 2  # the text reports fit, the figure not

    errors = error_lines_under_file_size_limit(
        [sys.executable, "-m", "train.evaluate", str(copy), "--data", str(fer2013_dir)], limit, repo_root
    )
    assert errors == [f"error: {copy / 'confusion_public.png'}: File too large"], errors
    assert {path.name: path.read_bytes() for path in copy.iterdir()} == before


@pytest.mark.parametrize("cut_row", ["3,0.18", "3,0.5,1.2,0.4,1.3,0.00"])
def test_a_history_row_cut_off_by_a_kill_is_dropped_with_a_warning(tiny_run, tmp_path, caplog, cut_row):
    from train.fit import HISTORY, read_history

    run_dir, _ = tiny_run
    shutil.copy(run_dir / HISTORY, tmp_path / HISTORY)
    with open(tmp_path / HISTORY, "a") as fh:
        fh.write(cut_row)  # every field there or not, a row without its line end was cut short
    with caplog.at_level(logging.WARNING, logger="train.fit"):
        assert [int(row["epoch"]) for row in read_history(tmp_path)] == [0, 1, 2]
    assert f"dropping its last row, cut off: {cut_row!r}" in caplog.text


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
        "confusion_int8_private.png",
        "fer_int8_private.json",
    ]
    assert "private_accuracy" not in read_sidecar(tmp_path / "tflite" / "fer_float32.tflite").metrics
    # raw uint8 pixels in, scores out that sum to about one
    public = data.load_split(fer2013_dir, "public")
    scores = tflite_scores(shipped, public.x[:20])
    np.testing.assert_allclose(scores.sum(1), 1.0, atol=0.03)


def test_model_failing_int8_parity_is_neither_shipped_nor_scored_on_private(
    tiny_run, fer2013_dir, tmp_path, monkeypatch
):
    import convert.tflite
    from convert.tflite import ParityError, convert_run

    run_dir, _ = tiny_run
    monkeypatch.setattr(convert.tflite, "MAX_INT8_DROP", -1.0)  # any int8 model now fails parity
    shipped = tmp_path / "models" / "fer_int8.tflite"
    with pytest.raises(ParityError, match="int8 model loses"):
        convert_run(run_dir, tmp_path / "tflite", ("int8",), fer2013_dir, ship_as=shipped)
    assert not shipped.exists()
    assert not list((tmp_path / "tflite").glob("*private*"))
    # kept for inspection under a name nothing takes for a usable model
    assert not (tmp_path / "tflite" / "fer_int8.tflite").exists()
    assert "private_accuracy" not in read_sidecar(tmp_path / "tflite" / "fer_int8.rejected.tflite").metrics


def test_config_rejects_unknown_keys_with_their_path(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("optimizer: {name: sgd, learnin_rate: 0.1}\n")
    with pytest.raises(ConfigError, match=r"optimizer\.learnin_rate: unknown key"):
        load_config(bad)
    bad.write_text("epochs: many\n")
    with pytest.raises(ConfigError, match=r"epochs: expected"):
        load_config(bad)


def test_corrupt_config_files_are_one_line_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    for text, kind in (("- epochs\n- 3\n", "list"), ("42\n", "int"), ("just words\n", "str")):
        bad.write_text(text)
        for overrides in (None, {"epochs": 1}, {"schedule.name": "constant"}):  # as python -m train --epochs 1
            with pytest.raises(ConfigError, match=rf"bad\.yaml: expected a mapping of settings, got {kind}$"):
                load_config(bad, overrides)
    bad.write_text("schedule: cosine\n")
    with pytest.raises(ConfigError, match=r"^schedule: expected a mapping, got 'cosine'$"):
        load_config(bad, {"schedule.warmup_epochs": 0})
    bad.write_text("schedule:\n")  # empty: the override fills it
    assert load_config(bad, {"schedule.warmup_epochs": 0}).schedule.warmup_epochs == 0
    bad.write_bytes(b"run_name: caf\xe9\n")  # Latin-1
    with pytest.raises(ConfigError, match=r"bad\.yaml: not UTF-8 text \(invalid continuation byte at byte 13\)$"):
        load_config(bad)
    bad.write_text("epochs: 3\nmodel: {name: vgg_bn\nseed: 1\n")
    with pytest.raises(ConfigError) as raised:
        load_config(bad)
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{bad}: not valid YAML (line ")
    assert "column" in message and "expected ',' or '}'" in message


def test_config_checks_names_and_model_parameters_at_load():
    """What would otherwise fail only after the data has loaded (or silently fall back to cosine)."""
    for key, value, message in (
        ("optimizer.name", "adamx", r"optimizer\.name: unknown 'adamx' \(choose from adamw, sgd\)"),
        ("schedule.name", "linear", r"schedule\.name: unknown 'linear' \(choose from cosine, constant\)"),
        ("model.name", "resnet", r"model\.name: unknown 'resnet' \(choose from seed, sep_bn, vgg_bn\)"),
        (
            "model.params",
            {"widht": [8]},
            r"model\.params\.widht: not a parameter of vgg_bn \(known: bn_momentum, "
            r"convs_per_stage, dense, dropout, widths\)",
        ),
        ("model.params", {"name": "x"}, r"model\.params\.name: not a parameter of vgg_bn"),  # the run names it
        (
            "students",
            {"small": {"name": "seed", "params": {"widths": [4]}}},
            r"students\.small\.params\.widths: not a parameter of seed \(known: none\)",
        ),
        ("students", {"small": {"name": "mobilenet"}}, r"students\.small\.name: unknown 'mobilenet'"),
        ("precision", "bfloat16", r"precision: unknown 'bfloat16' \(choose from float32, mixed_bfloat16"),
        ("jit_compile", "yes", r"jit_compile: expected auto, true or false, got 'yes'"),
    ):
        with pytest.raises(ConfigError, match=f"^{message}"):
            load_config(None, {key: value})
    cfg = load_config(
        None,
        {
            "model.name": "sep_bn",
            "model.params": {"widths": [8], "convs_per_stage": 1},
            "optimizer.name": "sgd",
            "schedule.name": "constant",
        },
    )
    assert cfg.model.params == {"widths": [8], "convs_per_stage": 1}


def test_config_checks_ranges_and_the_files_it_names_at_load(tmp_path):
    """Values of the right type that would fail only once the data has loaded, or train nonsense."""
    nowhere = tmp_path / "nosuch.keras"
    for key, value, message in (
        ("epochs", 0, r"epochs: expected a positive number, got 0"),
        ("batch_size", -1, r"batch_size: expected a positive number, got -1"),
        ("limit_per_class", 0, r"limit_per_class: expected a positive number, got 0"),
        ("optimizer.learning_rate", -1.0, r"optimizer\.learning_rate: expected a positive number, got -1\.0"),
        ("label_smoothing", 2.0, r"label_smoothing: expected a number in \[0, 1\), got 2\.0"),
        ("schedule.warmup_epochs", -1, r"schedule\.warmup_epochs: expected a number >= 0, got -1"),
        ("distill.temperature", 0.0, r"distill\.temperature: expected a positive number, got 0\.0"),
        ("augment.zoom", 1.5, r"augment\.zoom: expected a number in \[0, 1\), got 1\.5"),
        ("augment.contrast", 1.0, r"augment\.contrast: expected a number in \[0, 1\), got 1\.0"),
        ("augment.erasing", 1.5, r"augment\.erasing: expected a number in \[0, 1\], got 1\.5"),
        ("augment.noise", -0.1, r"augment\.noise: expected a number in \[0, 1\], got -0\.1"),
        ("augment.rotation", -5, r"augment\.rotation: expected a number in \[0, 180\], got -5"),
        ("augment.shift", 2, r"augment\.shift: expected a number in \[0, 1\), got 2"),
        ("model.params", {"widths": "abc"}, r"model\.params\.widths: expected a list of positive integers, got 'abc'"),
        ("model.params", {"widths": []}, r"model\.params\.widths: expected a list of positive integers, got \[\]"),
        ("model.params", {"dense": "x"}, r"model\.params\.dense: expected a positive integer, got 'x'"),
        ("model.params", {"dropout": 1.5}, r"model\.params\.dropout: expected a number in \[0, 1\), got 1\.5"),
        ("model.init", str(nowhere), rf"model\.init: cannot read {nowhere} \(No such file or directory\)$"),
        ("model.init", str(tmp_path), rf"model\.init: cannot read {tmp_path} \(Is a directory\)$"),
        ("students", {"small": {"init": str(nowhere)}}, r"students\.small\.init: cannot read .*nosuch\.keras"),
        ("distill.teachers", [str(nowhere)], r"distill\.teachers: cannot read .*nosuch\.keras"),
    ):
        with pytest.raises(ConfigError, match=f"^{message}"):
            load_config(None, {key: value})
    (tmp_path / "trained.keras").write_bytes(b"PK")
    cfg = load_config(None, {"model.init": str(tmp_path / "trained.keras"), "model.params": {"dropout": 0}})
    assert cfg.model.params == {"dropout": 0}


def test_train_cli_reports_a_corrupt_config_in_one_line_before_loading_data(tmp_path, capsys):
    from train.__main__ import main

    bad = tmp_path / "bad.yaml"
    nowhere = str(tmp_path / "nowhere")  # a config checked only after the data loads would fail on this instead
    for text, argv, message in (
        ("- epochs\n", ["--epochs", "1"], f"error: {bad}: expected a mapping of settings, got list"),
        ("optimizer: {name: adamx}\n", [], "error: optimizer.name: unknown 'adamx' (choose from adamw, sgd)"),
        ("model: {params: {widht: 3}}\n", [], "error: model.params.widht: not a parameter of vgg_bn"),
        ("epochs: 3\n", ["--model", "resnet"], "error: model.name: unknown 'resnet'"),
        ("epochs: 0\n", [], "error: epochs: expected a positive number, got 0"),
        ("model: {init: nosuch.keras}\n", [], "error: model.init: cannot read nosuch.keras (No such file"),
    ):
        bad.write_text(text)
        assert main(["--config", str(bad), "--data", nowhere, "--output-dir", str(tmp_path), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(message), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no run folder either


def test_run_json_names_the_config_file_only_when_it_alone_reproduces_the_run(tmp_path, monkeypatch):
    """CLI overrides of the recipe make the run folder's own config.yaml the one to name; where the
    data lie and where runs go do not change what is trained."""
    import train.fit
    from train.__main__ import main

    seen = []
    monkeypatch.setattr(train.fit, "train", lambda cfg, resume, deadline, config_path: seen.append(config_path))
    config = tmp_path / "recipe.yaml"
    config.write_text("run_name: recipe\nepochs: 3\n")
    for argv, expected in (
        ([], str(config)),
        (["--data", str(tmp_path), "--output-dir", str(tmp_path / "elsewhere")], str(config)),
        (["--epochs", "2"], None),
        (["--limit-per-class", "10"], None),
        (["--model", "seed"], None),
        (["--run-name", "other"], None),
    ):
        seen.clear()
        assert main(["--config", str(config), "--no-eval", *argv]) == 0
        assert seen == [expected], argv


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
    overrides.update(
        {"model.name": "sep_bn", "model.params": {"widths": [8, 16], "dense": 32, "dropout": 0.1, "bn_momentum": 0.8}}
    )
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


def test_split_metrics_list_every_class_in_label_order_even_one_never_seen():
    from train.evaluate import report_text, split_metrics

    y_true, y_pred = np.array([0, 0, 1, 2, 2, 2]), np.array([0, 1, 1, 2, 2, 0])
    metrics = split_metrics(y_true, y_pred, ["a", "b", "c", "d"])
    assert metrics["confusion_matrix"] == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]
    assert metrics["per_class"]["a"] == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert metrics["per_class"]["c"] == {"precision": 1.0, "recall": 0.6667, "f1": 0.8, "support": 3}
    assert metrics["per_class"]["d"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    assert metrics["accuracy"] == 0.6667
    assert metrics["macro_f1"] == round((0.5 + 2 / 3 + 0.8 + 0) / 4, 4)
    text = report_text(y_true, y_pred, ["a", "b", "c", "d"], "title")
    assert text.startswith("title\n") and "macro avg" in text and "weighted avg" in text
