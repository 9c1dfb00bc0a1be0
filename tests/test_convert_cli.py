"""``python -m convert`` and ``make convert``/``evaluate``: a run is a candidate unless told where to ship it; bad
run folders and configs are one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from disklimit import error_lines_under_file_size_limit

from fer_edge.contract import read_sidecar


def cli_env(repo_root):
    # this checkout's fer_edge, not whichever one the venv has installed
    path = os.pathsep.join((str(repo_root / "edge"), str(repo_root)))
    return {**os.environ, "PYTHONPATH": path, "TF_CPP_MIN_LOG_LEVEL": "3"}


def convert_cli(repo_root, cwd, *args):
    return subprocess.run(
        [sys.executable, "-m", "convert", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=cli_env(repo_root),
        timeout=600,
    )


def make(repo_root, *args, **environ):
    """A make target of this checkout, run with the venv running the tests (taken as installed, not rebuilt)."""
    venv = Path(sys.prefix)
    command = ["make", "-s", "-C", str(repo_root), "-o", f"{venv}/.installed", f"TRAIN_VENV={venv}", *args]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", **environ}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture
def fast_run(repo_root, tmp_path):
    """A run folder holding the shipped fast model's Keras original and its record."""
    run = tmp_path / "runs" / "fast"
    run.mkdir(parents=True)
    shutil.copyfile(repo_root / "checkpoints" / "fast.keras", run / "best.keras")
    labels = list(read_sidecar(repo_root / "models" / "fer_fast_int8.tflite").labels)
    (run / "run.json").write_text(json.dumps({"labels": labels, "model": "vgg_bn", "params": 592407}))
    return run


def test_a_converted_run_is_a_candidate_unless_shipped(repo_root, fer2013_dir, fast_run, tmp_path):
    result = convert_cli(
        repo_root, tmp_path, "--run", str(fast_run), "--variants", "float32", "--data", str(fer2013_dir)
    )
    assert result.returncode == 0, result.stderr
    sidecar = read_sidecar(fast_run / "tflite" / "fer_float32.tflite")
    assert sidecar.metrics["public_accuracy"] > 0.6
    assert "private_accuracy" not in sidecar.metrics and not list((fast_run / "tflite").glob("*private*"))
    assert not (tmp_path / "models").exists()  # nothing shipped, nowhere
    # and the log says so, with the command that would ship it
    assert f"not shipped: {fast_run} is a candidate" in result.stderr
    assert f"make convert RUN={fast_run} SHIPPED_default={fast_run}" in result.stderr


@pytest.mark.parametrize("damage", ["no run.json", "run.json without labels", "corrupt best.keras"])
def test_a_damaged_run_folder_is_one_error_line(repo_root, fast_run, tmp_path, damage):
    if damage == "no run.json":
        (fast_run / "run.json").unlink()
    elif damage == "run.json without labels":
        (fast_run / "run.json").write_text(json.dumps({"model": "vgg_bn", "params": 592407}))
    else:
        (fast_run / "best.keras").write_bytes(b"PK\x03\x04 not a keras archive")
    result = convert_cli(repo_root, tmp_path, "--run", str(fast_run), "--variants", "float32")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(fast_run) in errors[0], result.stderr
    assert ("best.keras" if damage == "corrupt best.keras" else "run.json") in errors[0]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["--variants", "float32,int9"],
            "argument --variants: unknown variant 'int9'; choose from float32, float16, dynamic, int8",
        ),
        (
            ["--variants", "float32", "--ship-as", "models/fer_int8.tflite"],
            "--ship-as ships the int8 model: add int8 to --variants",
        ),
    ],
    ids=["unknown-variant", "ship-without-int8"],
)
def test_variants_and_ship_as_are_checked_before_anything_is_converted(repo_root, fast_run, tmp_path, args, said):
    """A typo in the last variant was found only after the ones before it were converted; --ship-as without int8
    converted and shipped nothing, without a word."""
    result = convert_cli(repo_root, tmp_path, "--run", str(fast_run), *args)
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == f"python -m convert: error: {said}", result.stderr
    assert not (fast_run / "tflite").exists() and not (tmp_path / "models").exists()


def finished_after(run, trained: int, planned: int = 12) -> None:
    """The run's record of how many epochs it was to train and how many it did."""
    (run / "config.yaml").write_text(f"epochs: {planned}\n")
    rows = "".join(f"{epoch},0.5,0.6\n" for epoch in range(trained))
    (run / "history.csv").write_text("epoch,accuracy,val_accuracy\n" + rows)


def shipped_copy(repo_root, tmp_path, name):
    models = tmp_path / "models"
    models.mkdir(exist_ok=True)
    for suffix in (".tflite", ".json"):
        shutil.copyfile(repo_root / "models" / f"{name}{suffix}", models / f"fer_fast_int8{suffix}")
    return models / "fer_fast_int8.tflite"


def test_a_run_stopped_early_does_not_replace_the_shipped_model(repo_root, fast_run, tmp_path):
    finished_after(fast_run, trained=5)
    target = shipped_copy(repo_root, tmp_path, "fer_fast_int8")
    before = {p.name: p.read_bytes() for p in target.parent.iterdir()}
    result = convert_cli(repo_root, tmp_path, "--run", str(fast_run), "--variants", "int8", "--ship-as", str(target))
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "trained 5 of its 12 epochs" in errors[0] and "FORCE=1" in errors[0], result.stderr
    assert {p.name: p.read_bytes() for p in target.parent.iterdir()} == before


@pytest.mark.parametrize("written", ["./relative/", "absolute"])
def test_make_convert_knows_the_shipped_run_however_run_is_written(repo_root, fast_run, tmp_path, written):
    finished_after(fast_run, trained=5)  # refused at once, before converting, if make means to ship it
    target = shipped_copy(repo_root, tmp_path, "fer_fast_int8")
    relative = os.path.relpath(fast_run, repo_root)
    run, shipped_run = (f"./{relative}/", str(fast_run)) if written == "./relative/" else (str(fast_run), relative)
    result = make(repo_root, "convert", f"RUN={run}", f"SHIPPED_fast={shipped_run}", f"SHIP_fast={target}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"not shipping to {target}" in errors[0], result.stderr


def test_a_model_scoring_lower_on_public_test_is_not_shipped(repo_root, fer2013_dir, fast_run, tmp_path):
    # The fast run shipped over the default model's file: it scores lower on PublicTest, so it stays a candidate.
    finished_after(fast_run, trained=12)
    target = shipped_copy(repo_root, tmp_path, "fer_int8")
    before = target.read_bytes(), target.with_suffix(".json").read_bytes()
    result = convert_cli(
        repo_root, tmp_path, "--run", str(fast_run), "--variants", "int8", "--ship-as", str(target),
        "--data", str(fer2013_dir),
    )  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    shipped_public = json.loads(target.with_suffix(".json").read_text())["metrics"]["public_accuracy"]
    assert len(errors) == 1 and "scores 68." in errors[0] and f"{100 * shipped_public:.2f}%" in errors[0], result.stderr
    assert (target.read_bytes(), target.with_suffix(".json").read_bytes()) == before
    candidate = fast_run / "tflite" / "fer_int8.tflite"
    assert f"wrote {candidate}" in result.stderr  # where the candidate went
    sidecar = read_sidecar(candidate)
    assert sidecar.calibration is not None and "private_accuracy" not in sidecar.metrics  # PrivateTest unseen
    # the converter's C++ start-up and log lines stay out of the output
    for noise in ("oneDNN", "cuda", "absl::InitializeLog", "W0000", "I0000", "fully_quantize", "XNNPACK", "Warning"):
        assert noise not in result.stderr, result.stderr


@pytest.mark.parametrize("target", ["convert", "evaluate"])
@pytest.mark.parametrize("config", ["unknown key", "missing file"])
def test_make_stops_at_a_config_it_cannot_read(repo_root, tmp_path, target, config):
    path = tmp_path / "typo.yaml"
    if config == "unknown key":
        path.write_text("run_name: never_made\nepochz: 3\n")
    result = make(repo_root, target, f"CONFIG={path}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(path) in errors[0], result.stderr
    assert ("epochz: unknown key" if config == "unknown key" else "cannot read") in errors[0]
    assert not (repo_root / "runs" / "never_made").exists()


def test_make_evaluate_says_what_it_wrote_or_why_not(repo_root, fer2013_dir, fast_run, tmp_path):
    missing = tmp_path / "runs" / "nope"
    result = make(repo_root, "evaluate", f"RUN={missing}")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{missing}/best.keras not found" in errors[0], result.stderr

    result = make(repo_root, "evaluate", f"RUN={fast_run}", FER2013_DIR=str(fer2013_dir))
    assert result.returncode == 0, result.stderr
    reports = ("report_public.txt", "per_class_public.json", "metrics.json", "metrics.csv", "confusion_public.png")
    assert all((fast_run / name).is_file() for name in reports)
    assert f"wrote {fast_run}: {', '.join(reports)}" in result.stderr
    assert json.loads((fast_run / "metrics.json").read_text())["public"]["accuracy"] > 0.6
    for noise in ("oneDNN", "cuda", "absl::InitializeLog", "I0000", "E0000"):
        assert noise not in result.stderr, result.stderr


def test_ctrl_c_is_one_line_and_leaves_no_temporary_file(repo_root, fer2013_dir, fast_run, tmp_path):
    command = [sys.executable, "-m", "convert", "--run", str(fast_run), "--variants", "float32,float16,dynamic"]
    process = subprocess.Popen(
        [*command, "--data", str(fer2013_dir)],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(repo_root),
    )
    assert process.stderr is not None
    lines = []
    for line in process.stderr:
        lines.append(line)
        if f"wrote {fast_run / 'tflite' / 'fer_float32.tflite'}" in line:
            process.send_signal(signal.SIGINT)  # in the middle of the float16 conversion
            break
    lines += process.communicate(timeout=600)[1].splitlines(keepends=True)
    stderr = "".join(lines)
    assert process.returncode == 130 and "Traceback" not in stderr, stderr
    assert lines[-1].strip() == f"interrupted: {fast_run} not fully converted"
    assert not list((fast_run / "tflite").glob("*.tmp"))


def test_an_unwritable_output_is_one_error_line(repo_root, fer2013_dir, fast_run, tmp_path):
    (fast_run / "tflite").write_text("a file where the models go")
    result = convert_cli(
        repo_root, tmp_path, "--run", str(fast_run), "--variants", "float32", "--data", str(fer2013_dir)
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"converting {fast_run}" in errors[0], result.stderr


# ship() in a process whose writes stop at a size limit, as they would on a full disk
SHIP_WITH_A_SIZE_LIMIT = """
import resource, signal, sys
from pathlib import Path
from convert.tflite import ShipError, ship
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit then fails (EFBIG) instead of killing
resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[3]), resource.RLIM_INFINITY))
try:
    ship(Path(sys.argv[1]), Path(sys.argv[2]))
except ShipError as exc:
    sys.exit(f"error: {exc}")
"""


@pytest.mark.parametrize("failure", ["disk full", "sidecar copy fails"])
def test_a_ship_that_cannot_copy_both_files_leaves_the_shipped_pair_alone(repo_root, tmp_path, failure):
    target = shipped_copy(repo_root, tmp_path, "fer_fast_int8")
    candidate = tmp_path / "runs" / "default" / "tflite" / "fer_int8.tflite"  # another model, to ship over it
    candidate.parent.mkdir(parents=True)
    for suffix in (".tflite", ".json"):
        shutil.copyfile(repo_root / "models" / f"fer_int8{suffix}", candidate.with_suffix(suffix))
    before = {p.name: p.read_bytes() for p in target.parent.iterdir()}
    limit = 40_000 if failure == "disk full" else 1 << 30
    if failure == "sidecar copy fails":  # the model's copy is written; the sidecar's cannot be
        target.with_suffix(".json.tmp").mkdir()
    result = subprocess.run(
        [sys.executable, "-c", SHIP_WITH_A_SIZE_LIMIT, str(candidate), str(target), str(limit)],
        capture_output=True,
        text=True,
        env=cli_env(repo_root),
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(f"error: cannot ship {candidate} to {target}"), result.stderr
    assert {p.name: p.read_bytes() for p in target.parent.iterdir() if p.is_file()} == before  # no .tmp left


def test_a_sidecar_the_disk_cannot_take_leaves_the_previous_one_and_is_one_error_line(
    repo_root, fer2013_dir, cache_dir, tmp_path
):
    """--calibrate rewrites a shipped model's sidecar; on a full disk (here a file-size limit) the error line used to
    name no file and a half-written .json.tmp stayed beside the model."""
    from train import data

    data.load_split(fer2013_dir, "public", cache_dir)  # cached: the conversion only reads it
    target = shipped_copy(repo_root, tmp_path, "fer_fast_int8")
    sidecar = target.with_suffix(".json")
    before = {path.name: path.read_bytes() for path in target.parent.iterdir()}
    limit = len(before[sidecar.name]) // 2

    errors = error_lines_under_file_size_limit(
        [sys.executable, "-m", "convert", "--calibrate", str(target), "--data", str(fer2013_dir)],
        limit,
        repo_root,
        env=cli_env(repo_root),
        timeout=600,
    )
    assert errors == [f"error: [Errno 27] File too large: '{sidecar}'"], errors
    assert {path.name: path.read_bytes() for path in target.parent.iterdir()} == before


def without_private_calibration(model) -> list[str]:
    """The sidecar as it was before its calibration was scored on PrivateTest (the shipped accuracy stays); the
    names of the metrics taken out."""
    sidecar = json.loads(model.with_suffix(".json").read_text())
    shipped = ("private_accuracy", "private_macro_f1")
    removed = [k for k in sidecar["metrics"] if k.startswith("private_") and k not in shipped]
    sidecar["metrics"] = {k: v for k, v in sidecar["metrics"].items() if k not in removed}
    model.with_suffix(".json").write_text(json.dumps(sidecar, indent=2))
    return removed


@pytest.mark.parametrize("model", ["a candidate", "a shipped model already scored"])
def test_score_private_is_refused_where_the_protocol_does_not_score(repo_root, fast_run, tmp_path, model):
    target = shipped_copy(repo_root, tmp_path, "fer_fast_int8")
    if model == "a candidate":
        candidate = fast_run / "tflite" / "fer_int8.tflite"
        candidate.parent.mkdir()
        for suffix in (".tflite", ".json"):
            shutil.copyfile(target.with_suffix(suffix), candidate.with_suffix(suffix))
        without_private_calibration(candidate)
        target = candidate
    before = target.with_suffix(".json").read_bytes()
    result = convert_cli(repo_root, tmp_path, "--calibrate", str(target), "--score-private")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.stderr
    assert ("models/ only" if model == "a candidate" else "already holds PrivateTest numbers") in errors[0]
    assert target.with_suffix(".json").read_bytes() == before


def test_score_private_scores_a_shipped_model_once(repo_root, fer2013_dir, tmp_path):
    target = shipped_copy(repo_root, tmp_path, "fer_fast_int8")
    removed = without_private_calibration(target)
    result = convert_cli(repo_root, tmp_path, "--calibrate", str(target), "--score-private", "--data", str(fer2013_dir))
    assert result.returncode == 0, result.stderr
    metrics = read_sidecar(target).metrics
    assert removed and all(0 <= metrics[name] <= 1 for name in removed)
    again = convert_cli(repo_root, tmp_path, "--calibrate", str(target), "--score-private", "--data", str(fer2013_dir))
    assert again.returncode == 1 and "already holds PrivateTest numbers" in again.stderr
