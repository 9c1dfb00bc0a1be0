"""make pi-check: its recorded results match the lock, and bad input gets one clear line (the run itself is
`make pi-check`, which CI runs; it needs root, debootstrap and qemu-user-static)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from test_pi_lock import LOCK, parse_lock

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results-pi.json"


def test_the_recorded_pi_check_installed_the_lock_and_passed():
    result = json.loads(RESULTS.read_text())
    lock = {name: version for name, (version, _) in parse_lock(LOCK.read_text()).items()}
    installed = {name.lower(): version for name, version in result["userland"]["packages"].items()}
    for name in ("ai-edge-litert", "opencv-python-headless", "numpy", "av", "paho-mqtt", "pyyaml"):
        assert installed[name] == lock[name], f"{name}: pi-check ran {installed[name]}, the lock has {lock[name]}"
    assert result["userland"]["numpy_from"] == "apt" and result["userland"]["machine"] == "aarch64"
    assert result["userland"]["python"].startswith("3.11.") and result["userland"]["glibc"] == "2.36"
    assert result["run"]["frames_decoded"] == result["run"]["event_lines"] == result["run"]["frames_asked"] > 0
    for model in ("fer_int8", "fer_fast_int8"):
        parity = result["parity"][model]
        assert parity["faces"] >= 500 and parity["argmax_agree"] == parity["faces"], model
    assert result["verify"] == "" and result["passed"] is True


def _run(command: list[str], **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(command, cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True, timeout=60)


def test_pi_check_says_in_one_line_what_is_missing():
    result = _run(["bench/pi_check.sh"], PI_CLIP="/nonexistent/clip.mp4")
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    expected = "clip not found: /nonexistent/clip.mp4" if os.geteuid() == 0 else "needs root"
    assert len(lines) == 1 and lines[0].startswith("pi-check: error: ") and expected in lines[0], result.stderr


def test_pi_userland_refuses_a_board_it_does_not_emulate():
    result = _run(["tools/pi_userland.sh"], PI_BOARD="pi3")
    assert result.returncode != 0
    assert result.stderr.strip() == "pi-userland: error: PI_BOARD=pi3: pi4 or pi5"
