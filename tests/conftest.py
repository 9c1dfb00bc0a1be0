"""Shared fixtures: the repository, the shipped model, the demo clip, FER-2013 and small helpers."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO_ROOT


@pytest.fixture(scope="session")
def model_path(repo_root) -> Path:
    """The shipped int8 model (its .json sidecar beside it)."""
    path = repo_root / "models" / "fer_int8.tflite"
    assert path.is_file(), f"shipped model missing: {path}"
    return path


@pytest.fixture(scope="session")
def demo_clip(repo_root) -> Path:
    """assets/demo.mp4: 640x360, 30 fps, FER-2013 test faces moving about, with a face-free gap."""
    path = repo_root / "assets" / "demo.mp4"
    assert path.is_file(), f"demo clip missing: {path}"
    return path


@pytest.fixture(scope="session")
def fer2013_dir(repo_root) -> Path:
    """The FER-2013 image folders: $FER2013_DIR, else ../shared/fer2013 beside the repository."""
    path = Path(os.environ.get("FER2013_DIR") or repo_root.parent / "shared" / "fer2013")
    assert (path / "test").is_dir(), f"FER-2013 not found at {path} (set $FER2013_DIR)"
    return path


def public_test_faces(fer2013_dir: Path, count: int, seed: int = 0) -> list[tuple[Path, str]]:
    """A fixed random sample of ``count`` PublicTest images as (path, label), all classes mixed."""
    files = sorted((fer2013_dir / "test").glob("*/PublicTest_*.jpg"))
    sample = random.Random(seed).sample(files, count)
    return [(path, path.parent.name) for path in sample]


@pytest.fixture(scope="session")
def public_faces(fer2013_dir):
    return lambda count, seed=0: public_test_faces(fer2013_dir, count, seed)


@pytest.fixture(scope="session")
def cache_dir(repo_root) -> Path:
    """Where the training side caches FER-2013 as arrays (build/cache, ignored by git)."""
    return repo_root / "build" / "cache"


# --- test doors: `make test` runs everything; `make test-edge` (the device venv, no TensorFlow, no FER-2013)
# runs -m "not train and not slow". Markers are registered in pyproject.toml.

# modules that import TensorFlow/Keras (directly or through train/, convert/, bench/) or read FER-2013 throughout
TRAIN_MODULES = {
    "test_bench_robustness",
    "test_checkpoints",
    "test_convert_cli",
    "test_train_data",
    "test_train_distill",
    "test_train_pipeline",
    "test_train_progress",
}
# fixtures that read FER-2013 or make a model with TensorFlow
TRAIN_FIXTURES = {"fer2013_dir", "public_faces", "cache_dir", "model_failing_in_invoke"}
# modules whose tests take more than about ten seconds each (real venvs, servers, long recordings)
SLOW_MODULES = {"test_deploy"}

try:
    import tensorflow  # noqa: F401  (only whether it is there)
except ImportError:  # the device venv: these modules cannot even be collected
    collect_ignore = [f"{name}.py" for name in sorted(TRAIN_MODULES)]


def pytest_collection_modifyitems(config, items):
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1]
        if module in TRAIN_MODULES or TRAIN_FIXTURES & set(item.fixturenames):
            item.add_marker(pytest.mark.train)
        if module in SLOW_MODULES:
            item.add_marker(pytest.mark.slow)
