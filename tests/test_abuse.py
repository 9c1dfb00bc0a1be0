"""Faults and abuse, the fast part: bad models, sidecars, configs, sources and arguments, each given to the
real `fer-edge` command in a process of its own. Each must end in one `fer-edge: error:` line and a non-zero
exit: no traceback, no hang (a timeout), no runaway memory (an address-space limit). The long part (kills,
a model replaced mid-run, a soak) is tests/test_soak.py, `make soak`."""

from __future__ import annotations

import json
import random
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fer_edge.contract import file_sha256, sidecar_path

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "models" / "fer_int8.tflite"
FAST_MODEL = REPO / "models" / "fer_fast_int8.tflite"
CLIP = REPO / "assets" / "demo.mp4"
TIMEOUT_S = 30
MEMORY_LIMIT = 3 << 30  # bytes of address space; an alias bomb or an endless read would pass it at once


def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def fer_edge(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fer_edge.cli", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        preexec_fn=_limit_memory,
        stdin=subprocess.DEVNULL,
        cwd=cwd,
    )


# --- what is broken: each builder makes its files under tmp and returns the command's arguments ---------


def _model_pair(tmp: Path, data: bytes, sidecar: dict | bytes | None = None) -> Path:
    """A model file holding ``data`` and a sidecar: the shipped one with this file's sha256, or ``sidecar``."""
    model = tmp / "model.tflite"
    model.write_bytes(data)
    if isinstance(sidecar, bytes):
        sidecar_path(model).write_bytes(sidecar)
    elif sidecar is not None or data is not None:
        raw = json.loads(sidecar_path(MODEL).read_text())
        raw["sha256"] = file_sha256(model)
        raw.update(sidecar or {})
        sidecar_path(model).write_text(json.dumps(raw))
    return model


def check_model(model: Path) -> list[str]:
    return ["check-config", "--config", str(_write(model.parent / "config.yaml", f"model:\n  path: {model}\n"))]


def _write(path: Path, text: str | bytes) -> Path:
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def _random_bytes(count: int) -> bytes:
    return random.Random(0).randbytes(count)


def check_config(tmp: Path, text: str | bytes) -> list[str]:
    return ["check-config", "--config", str(_write(tmp / "config.yaml", text))]


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_source(source: str, *extra: str) -> list[str]:
    return ["run", "--source", source, "--no-record", "--max-frames", "5", *extra]


ALIAS_BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)

# The same, all inside one value: where validation quoted the value whole, the error line took all memory.
BOMB_IN_A_VALUE = (
    'source:\n  path: [&a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'
    + "".join(f", &{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi"))
    + "]\n"
)

BAD_MODELS = {
    "missing": (lambda tmp: run_source(str(CLIP), "--model", str(tmp / "nowhere.tflite")), "model not found"),
    "a folder": (lambda tmp: run_source(str(CLIP), "--model", str(tmp)), "model not found"),
    "empty": (lambda tmp: check_model(_model_pair(tmp, b"")), "not a loadable TFLite model"),
    "truncated": (lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes()[:5000])), "not a loadable"),
    "cut at the end": (lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes()[:-1000])), "not a loadable"),
    "random bytes": (lambda tmp: check_model(_model_pair(tmp, _random_bytes(100_000))), "not a loadable"),
    "an image": (lambda tmp: check_model(_model_pair(tmp, (REPO / "docs/demo-frame.png").read_bytes())), "loadable"),
}
BAD_SIDECARS = {
    "missing": (
        lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes(), b"x") and _unlink_sidecar(tmp)),
        "sidecar not found",
    ),
    "of another model": (
        lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes(), sidecar_path(FAST_MODEL).read_bytes())),
        "does not match its sidecar checksum",
    ),
    "not JSON": (lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes(), b"labels: [happy]")), "unreadable"),
    "not UTF-8": (lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes(), b"\xff\xfe{}")), "unreadable"),
    "a list": (lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes(), b"[1, 2]")), "expected a JSON object"),
    "empty object": (lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes(), b"{}")), "format"),
    "six labels": (lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes(), {"labels": list("abcdef")})), "labels"),
    "huge face margin": (
        lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes(), {"face_margin": 1e300})),
        "face_margin",
    ),
    "float input": (
        lambda tmp: check_model(
            _model_pair(
                tmp,
                MODEL.read_bytes(),
                {"input": {"shape": [1, 48, 48, 1], "dtype": "float32", "scale": 0.0, "zero_point": 0}},
            )
        ),
        "disagrees with the sidecar",
    ),
    "deeply nested": (lambda tmp: check_model(_model_pair(tmp, MODEL.read_bytes(), b"[" * 100_000)), "unreadable"),
}
BAD_CONFIGS = {
    "alias bomb": (lambda tmp: check_config(tmp, ALIAS_BOMB), "expands to more than 10000 values"),
    "alias bomb in a value": (lambda tmp: check_config(tmp, BOMB_IN_A_VALUE), "expands to more than 10000 values"),
    "contains itself": (lambda tmp: check_config(tmp, "source:\n  path: &p [*p]\n"), "contains itself"),
    "2 MB": (lambda tmp: check_config(tmp, "# just a comment\n" * 120_000), "more than a config can be"),
    "/dev/zero": (lambda tmp: ["check-config", "--config", "/dev/zero"], "more than 1000000 bytes"),
    "not UTF-8": (lambda tmp: check_config(tmp, b"source:\n  path: \xff\xfe\n"), "not UTF-8 text"),
    "random bytes": (lambda tmp: check_config(tmp, _random_bytes(4096)), "not"),
    "NUL bytes": (lambda tmp: check_config(tmp, b"source:\n  fps: 3\x00\n"), "not valid YAML"),
    "a list": (lambda tmp: check_config(tmp, "- source\n- model\n"), "expected a mapping of sections, got list"),
    "bad YAML": (lambda tmp: check_config(tmp, "source: [fps: 3\n"), "not valid YAML"),
    "a tab": (lambda tmp: check_config(tmp, "source:\n\tfps: 3\n"), "not valid YAML"),
    "deep nesting": (lambda tmp: check_config(tmp, "[" * 50_000), "not valid YAML"),
    "unknown section": (lambda tmp: check_config(tmp, "sauce:\n  fps: 3\n"), "sauce: unknown key"),
    "missing": (lambda tmp: ["check-config", "--config", str(tmp / "nowhere.yaml")], "cannot read"),
    "a folder": (lambda tmp: ["check-config", "--config", str(tmp)], "cannot read"),
    "fps 1e300": (lambda tmp: check_config(tmp, "source:\n  fps: 1e300\n"), "source.fps: expected a number in"),
    "fps 10**400": (lambda tmp: check_config(tmp, "source:\n  fps: 1" + "0" * 400 + "\n"), "source.fps: expected"),
    "fps .nan": (lambda tmp: check_config(tmp, "source:\n  fps: .nan\n"), "source.fps: expected a number"),
    "width 1e12": (lambda tmp: check_config(tmp, "source:\n  width: 1000000000000\n"), "source.width: expected"),
    "camera index -5": (lambda tmp: check_config(tmp, "source:\n  device: -5\n"), "source.device: expected"),
    "reopen a year": (lambda tmp: check_config(tmp, "source:\n  reopen_max_s: 31536000\n"), "source.reopen_max_s"),
    "threads 1e6": (lambda tmp: check_config(tmp, "model:\n  threads: 1000000\n"), "model.threads: expected"),
    "font 1e308": (lambda tmp: check_config(tmp, "overlay:\n  font_scale: 1e308\n"), "overlay.font_scale"),
    "thickness -1": (lambda tmp: check_config(tmp, "overlay:\n  thickness: -1\n"), "overlay.thickness"),
    "status 1e308 s": (lambda tmp: check_config(tmp, "logging:\n  status_interval_s: 1e308\n"), "logging.status"),
    "level as a list": (lambda tmp: check_config(tmp, "logging:\n  level: [INFO]\n"), "logging.level: expected"),
    "watchdog 2": (lambda tmp: check_config(tmp, "service:\n  watchdog: 2\n"), "service.watchdog: expected true"),
    "events as text": (lambda tmp: check_config(tmp, "events: on please\n"), "events: expected a mapping"),
}
BAD_SOURCES = {
    "missing file": (lambda tmp: run_source(str(tmp / "nowhere.mp4")), "video file not found"),
    "not a video": (lambda tmp: run_source(str(_write(tmp / "notes.mp4", "not a video\n"))), "cannot open video"),
    "random bytes": (lambda tmp: run_source(str(_write(tmp / "noise.mp4", _random_bytes(200_000)))), "video"),
    "empty file": (lambda tmp: run_source(str(_write(tmp / "empty.mp4", b""))), "cannot open video"),
    "empty folder": (lambda tmp: run_source(str(tmp)), "no images in"),
    "unplugged camera": (lambda tmp: run_source("97"), "cannot open camera 97"),
    "missing /dev/video": (lambda tmp: run_source("/dev/video97"), "cannot open camera /dev/video97"),
    "stream nobody serves": (
        lambda tmp: run_source(f"rtsp://admin:s3cret@127.0.0.1:{_closed_port()}/live"),
        "cannot open stream rtsp://admin:***@127.0.0.1",
    ),
}
BAD_ARGUMENTS = {
    "max frames 0": (lambda tmp: run_source(str(CLIP), "--max-frames", "0"), "--max-frames: expected a positive"),
    "max frames text": (lambda tmp: ["run", "--max-frames", "many"], "argument --max-frames: invalid int value"),
    "bench frames -1": (lambda tmp: ["bench", "--source", str(CLIP), "--frames", "-1"], "--frames: expected"),
    "no command": (lambda tmp: [], "the following arguments are required: COMMAND"),
    "unknown command": (lambda tmp: ["fly"], "invalid choice: 'fly'"),
    "unknown option": (lambda tmp: ["run", "--turbo"], "unrecognized arguments: --turbo"),
    "report of nothing": (lambda tmp: ["report", str(tmp / "nowhere.jsonl")], "nowhere.jsonl"),
    "config and source missing": (lambda tmp: ["run", "--config", str(tmp / "a.yaml"), "--source", "b.mp4"], "a.yaml"),
}


def _unlink_sidecar(tmp: Path) -> Path:
    sidecar_path(tmp / "model.tflite").unlink()
    return tmp / "model.tflite"


CASES = {
    f"{group}: {name}": case
    for group, cases in (
        ("model", BAD_MODELS),
        ("sidecar", BAD_SIDECARS),
        ("config", BAD_CONFIGS),
        ("source", BAD_SOURCES),
        ("arguments", BAD_ARGUMENTS),
    )
    for name, case in cases.items()
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_one_error_line(tmp_path, case):
    build, expected = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    result = fer_edge(*build(work), cwd=tmp_path)
    errors = [line for line in result.stderr.splitlines() if line.startswith("fer-edge: error:")]
    assert result.returncode != 0, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    assert len(errors) == 1 and expected in errors[0], result.stderr[-2000:]
    assert len(errors[0]) < 400, errors[0]
    assert "s3cret" not in result.stderr + result.stdout
