"""requirements-pi.lock: one pinned, hashed install for every Pi, resolved for CPython 3.11 on aarch64."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[1]
LOCK = REPO / "requirements-pi.lock"
EDGE = REPO / "requirements-edge.txt"
CONSTRAINTS = REPO / "deploy" / "pi-constraints.txt"
# 64-bit Raspberry Pi OS Bookworm: CPython 3.11.2, glibc 2.36 (the userland of make pi-check reports both)
PLATFORM = ("--python-platform", "aarch64-manylinux_2_36", "--python-version", "3.11.2")
UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")
needs_uv = pytest.mark.skipif(UV is None, reason="uv missing: it is in requirements-dev.txt (make test installs it)")


def parse_lock(text: str) -> dict[str, tuple[str, list[str]]]:
    """name -> (version, hashes) of a pip requirements file with --hash options."""
    entries: dict[str, tuple[str, list[str]]] = {}
    for block in re.sub(r"\\\n\s*", " ", text).splitlines():
        block = block.split("#", 1)[0].strip()
        if not block:
            continue
        spec, *options = block.split(" --")
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)==([^\s;]+)", spec.strip())
        assert match, f"not pinned with ==: {block!r}"
        hashes = [o.split("=", 1)[1].strip() for o in options if o.startswith("hash=")]
        assert len(hashes) == len(options), f"options other than --hash: {block!r}"
        entries[canonicalize_name(match.group(1))] = (match.group(2), hashes)
    return entries


def requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def pins(output: str) -> dict[str, str]:
    return {name: version for name, (version, _) in parse_lock(output).items()}


@pytest.fixture(scope="module")
def lock():
    return parse_lock(LOCK.read_text())


def test_every_locked_package_is_pinned_with_sha256_hashes(lock):
    assert len(lock) >= 6
    for name, (_, hashes) in lock.items():
        assert hashes, f"{name} has no hash: pip --require-hashes would refuse the lock"
        assert all(re.fullmatch(r"sha256:[0-9a-f]{64}", h) for h in hashes), name


def test_the_lock_satisfies_requirements_edge_txt(lock):
    pi = {"platform_machine": "aarch64", "sys_platform": "linux", "python_version": "3.11"}
    for requirement in requirements(EDGE):
        if requirement.marker and not requirement.marker.evaluate(pi):
            continue
        name = canonicalize_name(requirement.name)
        assert name in lock, f"{requirement} is in requirements-edge.txt, not in the lock: make pi-lock"
        assert requirement.specifier.contains(lock[name][0], prereleases=True), f"{requirement} vs {lock[name][0]}"


def test_numpy_is_held_at_bookworms_and_opencv_is_a_numpy_1_wheel(lock):
    held = {canonicalize_name(r.name): str(r.specifier) for r in requirements(CONSTRAINTS)}
    assert held["numpy"] == "==1.24.2"
    assert lock["numpy"][0] == "1.24.2"
    major, minor = (int(part) for part in lock["opencv-python-headless"][0].split(".")[:2])
    assert (major, minor) < (4, 12)  # 4.12 on need NumPy 2
    assert "tflite-runtime" not in lock and "tensorflow" not in lock


def test_install_sh_installs_the_lock_with_require_hashes():
    script = (REPO / "deploy" / "install.sh").read_text()
    assert re.search(r"pip install --quiet --require-hashes --only-binary=:all: -r", script)
    assert 'LOCK_PLATFORM="aarch64 3.11"' in script
    assert "requirements-pi.lock" in (REPO / "deploy" / "deploy.sh").read_text()  # sent to the Pi


def compile_for_the_pi(*extra: str, lock: Path = LOCK) -> subprocess.CompletedProcess:
    """requirements-edge.txt resolved for the Pi, wheels only, with the lock's pins as constraints."""
    command = [UV, "pip", "compile", str(EDGE), "-c", str(CONSTRAINTS), "-c", str(lock), *PLATFORM]
    command += ["--only-binary", ":all:", "--no-header", "--no-annotate", "--generate-hashes", *extra]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=REPO)


@pytest.mark.slow
@needs_uv
def test_the_lock_resolves_for_aarch64_cpython_311_and_is_exactly_what_requirements_edge_needs(lock):
    """Every pin has a wheel for CPython 3.11 on aarch64 (glibc 2.36), and nothing is missing or left over."""
    result = compile_for_the_pi()
    assert result.returncode == 0, result.stderr
    assert pins(result.stdout) == {name: version for name, (version, _) in lock.items()}


@pytest.mark.slow
@needs_uv
def test_the_resolve_check_fails_for_a_lock_that_could_not_install(tmp_path):
    """The check above can fail: OpenCV 4.12 needs NumPy 2; PyYAML 5.4.1 has no CPython 3.11 wheel."""
    text = LOCK.read_text()
    for old, new, why in (
        (r"opencv-python-headless==4\.11\.\S+", "opencv-python-headless==4.12.0.88", "numpy>=2"),
        (r"pyyaml==\S+", "pyyaml==5.4.1", "pyyaml==5.4.1"),
    ):
        broken = tmp_path / "broken.lock"
        broken.write_text(re.sub(old, new, text))
        result = compile_for_the_pi(lock=broken)
        assert result.returncode != 0 and why in result.stderr, result.stderr
