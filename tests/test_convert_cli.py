"""``python -m convert``: a run is a candidate unless told where to ship it; bad run folders are one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from fer_edge.contract import read_sidecar


def convert_cli(repo_root, cwd, *args):
    env = {**os.environ, "PYTHONPATH": str(repo_root), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.run(
        [sys.executable, "-m", "convert", *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=600
    )


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


@pytest.mark.parametrize("damage", ["no run.json", "corrupt best.keras"])
def test_a_damaged_run_folder_is_one_error_line(repo_root, fast_run, tmp_path, damage):
    if damage == "no run.json":
        (fast_run / "run.json").unlink()
    else:
        (fast_run / "best.keras").write_bytes(b"PK\x03\x04 not a keras archive")
    result = convert_cli(repo_root, tmp_path, "--run", str(fast_run), "--variants", "float32")
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and str(fast_run) in errors[0], result.stderr
    assert ("run.json" if damage == "no run.json" else "best.keras") in errors[0]
