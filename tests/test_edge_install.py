"""A plain (not editable) install of ./edge, run from the repository root, finds the shipped model."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

# the wheel is built without build isolation (no index needed): setuptools' bdist_wheel needs `wheel`
needs_wheel = pytest.mark.skipif(
    importlib.util.find_spec("wheel") is None, reason="building the fer-edge wheel needs the `wheel` package"
)

# without the PYTHONPATH a test run may set, which would put the checkout's fer_edge first
PLAIN_ENV = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}


@pytest.fixture(scope="module")
def installed(repo_root, tmp_path_factory) -> Path:
    """A fresh venv holding a wheel of ./edge; its dependencies come from this interpreter's site-packages."""
    work = tmp_path_factory.mktemp("install")
    shutil.copytree(repo_root / "edge", work / "edge", ignore=shutil.ignore_patterns("build", "*.egg-info"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", str(work / "edge"), "-w", str(work)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=60)
    site = Path(sysconfig.get_path("purelib", vars={"base": str(venv), "platbase": str(venv)}))
    (site / "dependencies.pth").write_text(sysconfig.get_path("purelib") + "\n")
    wheel = next(work.glob("fer_edge-*.whl"))
    subprocess.run(
        [*pip, "--python", str(venv / "bin" / "python"), "install", "--no-deps", str(wheel)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    where = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import fer_edge; print(fer_edge.__file__)"],
        env=PLAIN_ENV,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert where.startswith(str(site)), where  # the wheel's copy, not the checkout
    return venv / "bin" / "fer-edge"


@needs_wheel
@pytest.mark.parametrize("command", [["run", "--max-frames", "5", "--no-record"], ["bench", "--frames", "5"]])
def test_a_plain_install_finds_the_shipped_model_from_the_repository(installed, repo_root, command):
    result = subprocess.run(
        [str(installed), command[0], "--source", "assets/demo.mp4", *command[1:]],
        cwd=repo_root,
        env=PLAIN_ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert f"model {repo_root / 'models' / 'fer_int8.tflite'}" in result.stderr


@needs_wheel
def test_a_plain_install_elsewhere_names_the_places_tried_and_the_option(installed, repo_root, tmp_path):
    command = [str(installed), "run", "--source", str(repo_root / "assets" / "demo.mp4"), "--no-record"]
    result = subprocess.run(
        [*command, "--max-frames", "1"], cwd=tmp_path, env=PLAIN_ENV, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert result.stderr.startswith(f"fer-edge: error: no model found (tried {tmp_path / 'models'}")
    assert "pass --model PATH" in result.stderr and "Traceback" not in result.stderr
