"""``fer-edge`` end to end: the demo clip through the CLI, recordings checked with PyAV and OpenCV, errors, signals."""

from __future__ import annotations

import csv
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from videos import decode_opencv, decode_pyav


@pytest.fixture(autouse=True)
def in_scratch_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a run without --output writes to ./out


def fer_edge(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fer_edge.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("fer-edge: error:")]


def decoded_frames(path: Path) -> int:
    return len(decode_pyav(path))


@pytest.fixture(scope="module")
def demo_run(demo_clip, tmp_path_factory):
    """``fer-edge run --source assets/demo.mp4 --output DIR --max-frames 60`` once for the module."""
    output = tmp_path_factory.mktemp("run") / "out"
    result = fer_edge("run", "--source", str(demo_clip), "--output", str(output), "--max-frames", "60")
    return result, output


def test_run_on_the_demo_clip_records_annotated_video_and_events(demo_run, demo_clip):
    result, output = demo_run
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "processed 60 frames" in result.stderr
    videos = sorted(output.glob("*.mp4"))
    events = sorted(output.glob("*.jsonl"))
    assert len(videos) == 1 and len(events) == 1, sorted(p.name for p in output.iterdir())
    assert not list(output.glob("*.part"))
    assert decoded_frames(videos[0]) == 60
    frames = decode_opencv(videos[0])
    assert len(frames) == 60 and frames[0].shape == (360, 640, 3)
    lines = [json.loads(line) for line in events[0].read_text().splitlines()]
    assert len(lines) == 60
    faces_per_frame = [len(line["faces"]) for line in lines]
    assert sum(1 for n in faces_per_frame[30:] if n) >= 27  # the demo's face appears at frame 30
    # An overlay box (pure green) appears in the recording only where faces were found.
    green = [((f[:, :, 1] > 200) & (f[:, :, 0] < 80) & (f[:, :, 2] < 80)).sum() for f in frames]
    assert max(green[:25]) < 50 and all(green[i] > 200 for i in range(60) if faces_per_frame[i])


def test_console_script_is_installed():
    script = Path(sys.executable).parent / "fer-edge"
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    for command in ("run", "check-config", "bench", "report"):
        assert command in result.stdout


def test_python_dash_m_fer_edge_is_the_same_command(tmp_path):
    """``python -m fer_edge`` for an install whose scripts folder is not on PATH (pip install --user on a Pi)."""
    listed = subprocess.run([sys.executable, "-m", "fer_edge", "--help"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("usage: fer-edge ")
    for command in ("run", "check-config", "bench", "report"):
        assert command in listed.stdout
    missing = tmp_path / "missing.tflite"
    refused = subprocess.run(
        [sys.executable, "-m", "fer_edge", "check-config", "--model", str(missing)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1
    assert error_lines(refused) == [f"fer-edge: error: model not found: {missing}"], refused.stderr


def option_helps(help_text: str) -> dict[str, str]:
    """An argparse --help's options section: each option's invocation (``--model PATH``) and its help text."""
    options: dict[str, str] = {}
    invocation = ""
    for line in help_text.splitlines():
        if line.startswith("  -"):
            invocation, *said = re.split(r"\s{2,}", line.strip(), maxsplit=1)
            options[invocation] = " ".join(said)
        elif invocation and line.startswith("    "):
            options[invocation] = f"{options[invocation]} {line.strip()}".strip()
        else:
            invocation = ""
    return options


@pytest.mark.parametrize(
    "command",
    [
        ["fer_edge", "run"],
        ["fer_edge", "check-config"],
        ["fer_edge", "bench"],
        ["fer_edge", "report"],
        ["convert"],
        ["train"],
    ],
)
def test_every_option_says_what_it_does_and_a_value_its_default(command, repo_root):
    result = subprocess.run(
        [sys.executable, "-m", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=repo_root,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(repo_root / "edge"), str(repo_root)])},
    )
    assert result.returncode == 0, result.stderr
    options = option_helps(result.stdout)
    assert len(options) > 2, result.stdout
    unexplained = [invocation for invocation, said in options.items() if not said]
    assert not unexplained, result.stdout
    takes_a_value = [invocation for invocation in options if re.search(r" [A-Z{]", invocation)]
    no_default = [invocation for invocation in takes_a_value if "default" not in options[invocation]]
    assert not no_default, result.stdout


def test_report_subcommand_summarizes_the_run(demo_run, tmp_path):
    _, output = demo_run
    events = sorted(output.glob("*.jsonl"))
    result = fer_edge("report", *map(str, events), "--output", str(tmp_path / "report"))
    assert result.returncode == 0, result.stderr
    labels_seen = [
        face["label"]
        for path in events
        for line in path.read_text().splitlines()
        for face in json.loads(line)["faces"]
        if face.get("label") is not None
    ]
    with (tmp_path / "report" / "tracks.csv").open(newline="") as table:
        rows = list(csv.DictReader(table))
    assert rows and sum(int(row["frames"]) for row in rows) == len(labels_seen) > 0
    assert {row["dominant"] for row in rows} <= set(labels_seen)


def test_missing_camera_is_one_error_line_and_exit_1():
    result = fer_edge("run", "--source", "99", "--no-record")
    assert result.returncode == 1
    expected = "fer-edge: error: cannot open camera 99 (not connected, or in use by another process?)"
    assert error_lines(result) == [expected]
    assert "Traceback" not in result.stderr


def test_a_start_that_fails_leaves_its_output_folder_as_it_found_it(demo_clip, tmp_path):
    """No lock file, nor the folders made for it, after a camera missing or a web port taken; an earlier run's
    lock file stays."""
    import socket

    from fer_edge.record.folderlock import LOCK_NAME

    nested = tmp_path / "new" / "deeper" / "out"
    missing_camera = fer_edge("run", "--source", "99", "--output", str(nested))
    assert missing_camera.returncode == 1 and len(error_lines(missing_camera)) == 1, missing_camera.stderr
    assert not (tmp_path / "new").exists()

    empty = tmp_path / "empty"
    empty.mkdir()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        config = tmp_path / "web.yaml"
        config.write_text(f"web:\n  enabled: true\n  listen: 127.0.0.1:{holder.getsockname()[1]}\n")
        port_taken = fer_edge("run", "--config", str(config), "--source", str(demo_clip), "--output", str(empty))
    assert port_taken.returncode != 0 and "web.listen" in error_lines(port_taken)[0], port_taken.stderr
    assert list(empty.iterdir()) == []

    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / LOCK_NAME).write_text("12345\n")
    again = fer_edge("run", "--source", "99", "--output", str(earlier))
    assert again.returncode == 1 and [p.name for p in earlier.iterdir()] == [LOCK_NAME]


def test_a_lock_file_deleted_by_a_failed_start_is_never_held_by_two_runs(tmp_path, monkeypatch):
    """A run that opened the lock file just before a failed start deleted it must not go on holding a file that
    the next run cannot see: it locks the file the path names."""
    from fer_edge.errors import RecordingError
    from fer_edge.record import folderlock

    output = tmp_path / "out"
    failing = folderlock.lock_folder(output)
    open_lock_file = folderlock.open_lock_file
    opened: list[Path] = []

    def opened_as_the_failed_start_gives_up(path: Path, directory: Path) -> tuple[int, bool]:
        result = open_lock_file(path, directory)
        if not opened:
            failing.abandon()
        opened.append(path)
        return result

    monkeypatch.setattr(folderlock, "open_lock_file", opened_as_the_failed_start_gives_up)
    racer = folderlock.lock_folder(output)
    try:
        assert (output / folderlock.LOCK_NAME).read_text() == f"{os.getpid()}\n"
        with pytest.raises(RecordingError, match="is in use by another fer-edge run"):
            folderlock.lock_folder(output)
    finally:
        racer.close()


def test_verbose_shows_the_traceback():
    result = fer_edge("-v", "run", "--source", "99", "--no-record")
    assert result.returncode == 1 and "Traceback" in result.stderr and len(error_lines(result)) == 1


@pytest.mark.parametrize(
    ("args", "code", "expected"),
    [
        (("run", "--source", "/nonexistent/clip.mp4"), 1, "video file not found: /nonexistent/clip.mp4"),
        (("run", "--max-frames", "0"), 2, "--max-frames: expected a positive integer, got 0"),
        (("run", "--config", "/nonexistent.yaml"), 2, "/nonexistent.yaml: cannot read"),
        (("bench", "--frames", "-1"), 2, "--frames: expected a positive integer, got -1"),
        # an unset shell variable: not camera 0, not the bundled model
        (("run", "--source", ""), 2, "argument --source: expected a value, got an empty string"),
        (("run", "--source", "\u00b2"), 1, "video file not found: \u00b2"),  # a digit to str.isdigit, not int()
        (("check-config", "--model", " "), 2, "argument --model: expected a value, got an empty string"),
    ],
)
def test_expected_failures_are_one_line(args, code, expected):
    result = fer_edge(*args)
    assert result.returncode == code
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith(f"fer-edge: error: {expected}"), result.stderr
    assert "Traceback" not in result.stderr


def bad_sidecar_model(folder: Path, model_path: Path, text: str) -> Path:
    """A copy of the shipped model with ``text`` as its sidecar (the sidecar's sha256 covers the .tflite only)."""
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / model_path.name
    shutil.copyfile(model_path, model)
    model.with_suffix(".json").write_text(text)
    return model


def edited_sidecar(model_path: Path, **changes) -> str:
    raw = json.loads(model_path.with_suffix(".json").read_text())
    raw.update(changes)
    return json.dumps(raw)


@pytest.mark.parametrize(
    ("sidecar", "expected"),
    [
        (lambda m: "[]", "malformed sidecar: expected a JSON object, got []"),
        (lambda m: edited_sidecar(m, face_margin=0), "malformed sidecar: face_margin: expected a number in [0.25, 4]"),
        (lambda m: edited_sidecar(m, labels="abcdefg"), "malformed sidecar: labels: expected a list of non-empty"),
        (lambda m: edited_sidecar(m, output={"shape": [], "dtype": "uint8"}), "malformed sidecar: output.shape:"),
    ],
)
def test_a_bad_sidecar_stops_the_run_before_the_first_frame(demo_clip, model_path, tmp_path, sidecar, expected):
    model = bad_sidecar_model(tmp_path / "bad", model_path, sidecar(model_path))
    result = fer_edge("run", "--model", str(model), "--source", str(demo_clip), "--no-record")
    assert result.returncode == 1
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith(f"fer-edge: error: {model.with_suffix('.json')}: {expected}"), (
        result.stderr
    )
    assert "Traceback" not in result.stderr and "processed" not in result.stderr


# Configs that `run` refuses before it opens a camera; (config text, the error line's start). In the text,
# {clip} is the demo clip, {tmp} a scratch folder, {bad_model} a model copy whose sidecar has face_margin 0.
REFUSED_CONFIGS = {
    "not UTF-8": (b"\xff\xfe\x00", "{tmp}/config.yaml: not UTF-8 text"),
    "images without a path": ("source:\n  kind: images\n", "source.path: required for source kind images"),
    "file without a path": ("source:\n  kind: file\n", "source.path: required for source kind file"),
    "missing video file": ("source:\n  path: {tmp}/none.mp4\n", "video file not found: {tmp}/none.mp4"),
    "empty image folder": ("source:\n  kind: images\n  path: {tmp}/empty\n", "no images in {tmp}/empty"),
    "missing cascade": (
        "source:\n  path: {clip}\ndetector:\n  kind: haar\n  cascade: /nonexistent.xml\n",
        "Haar cascade not found (tried /nonexistent.xml)",
    ),
    "cascade not XML": (
        "source:\n  path: {clip}\ndetector:\n  kind: haar\n  cascade: {tmp}/passwd\n",
        "Haar cascade {tmp}/passwd could not be loaded (not a cascade XML file?)",
    ),
    "bad sidecar": (
        "source:\n  path: {clip}\nmodel:\n  path: {bad_model}\n",
        "{tmp}/bad/fer_int8.json: malformed sidecar: face_margin",
    ),
    "model that does not load": (  # cut short before its sidecar was written: the checksum matches
        "source:\n  path: {clip}\nmodel:\n  path: {cut_model}\n",
        "{tmp}/cut/fer_int8.tflite: not a loadable TFLite model",
    ),
    "model unlike its sidecar": (
        "source:\n  path: {clip}\nmodel:\n  path: {odd_scale}\n",
        "{tmp}/odd/fer_int8.tflite: input quantization (scale 1.0, zero point 0) disagrees with the sidecar",
    ),
}


def cut_model(folder: Path, model_path: Path) -> Path:
    """The first half of the shipped model, with a sidecar whose sha256 is that half's."""
    model = bad_sidecar_model(folder, model_path, "")
    model.write_bytes(model_path.read_bytes()[: model_path.stat().st_size // 2])
    checksum = hashlib.sha256(model.read_bytes()).hexdigest()
    model.with_suffix(".json").write_text(edited_sidecar(model_path, sha256=checksum))
    return model


@pytest.mark.parametrize("case", list(REFUSED_CONFIGS))
def test_check_config_refuses_what_run_refuses(case, demo_clip, model_path, tmp_path):
    """check-config guards the service's (re)start: what `run` refuses without a camera, it refuses too,
    with the same one line and exit status."""
    (tmp_path / "empty").mkdir()
    (tmp_path / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    bad_model = bad_sidecar_model(tmp_path / "bad", model_path, edited_sidecar(model_path, face_margin=0))
    text, expected = REFUSED_CONFIGS[case]
    model_input = json.loads(model_path.with_suffix(".json").read_text())["input"]
    odd_scale = bad_sidecar_model(
        tmp_path / "odd", model_path, edited_sidecar(model_path, input={**model_input, "scale": 0.5})
    )
    values = {
        "clip": demo_clip,
        "tmp": tmp_path,
        "bad_model": bad_model,
        "odd_scale": odd_scale,
        "cut_model": cut_model(tmp_path / "cut", model_path),
    }
    config = tmp_path / "config.yaml"
    config.write_bytes(text if isinstance(text, bytes) else text.format(**values).encode())
    check = fer_edge("check-config", "--quiet", "--config", str(config))
    run = fer_edge("run", "--config", str(config), "--no-record", "--max-frames", "1")
    for result in (check, run):
        assert "Traceback" not in result.stderr
        lines = error_lines(result)
        assert len(lines) == 1 and lines[0].startswith(f"fer-edge: error: {expected.format(**values)}"), result.stderr
    assert check.returncode == run.returncode != 0
    assert error_lines(check) == error_lines(run)


@pytest.mark.parametrize(
    ("source", "said"),
    [
        ("kind: auto\n  device: /dev/v4l/by-id/usb-cam-video-index0", True),
        ("kind: auto\n  device: rtsp://viewer:secret@cam.local/stream", True),
        ("kind: opencv\n  device: /dev/v4l/by-id/usb-cam-video-index0", False),
        ("kind: auto", False),
    ],
)
def test_check_config_says_a_camera_named_beside_kind_auto_is_not_the_one_used(tmp_path, source, said):
    """Where picamera2 is installed, kind auto takes the camera module: a USB camera or stream named in
    source.device would read as the one recorded, and is not."""
    stand_in = tmp_path / "site" / "picamera2"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text("raise ImportError('found, never imported')\n")
    config = tmp_path / "config.yaml"
    config.write_text(f"source:\n  {source}\nrecording:\n  output_dir: {tmp_path / 'out'}\n")
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")])}
    check = fer_edge("check-config", "--config", str(config), env=env)
    assert check.returncode == 0, check.stderr
    warned = [line for line in check.stderr.splitlines() if "is not used: kind auto takes the camera module" in line]
    assert len(warned) == (1 if said else 0), check.stderr
    assert "secret" not in check.stderr


@pytest.mark.skipif(importlib.util.find_spec("picamera2") is not None, reason="picamera2 is installed here")
def test_check_config_refuses_the_pi_camera_without_picamera2(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text("source:\n  kind: picamera2\n")
    check = fer_edge("check-config", "--quiet", "--config", str(config))
    run = fer_edge("run", "--config", str(config), "--no-record", "--max-frames", "1")
    assert check.returncode == run.returncode == 1
    assert (
        error_lines(check)
        == error_lines(run)
        == ["fer-edge: error: picamera2 is not installed (apt install python3-picamera2)"]
    )


@pytest.mark.parametrize("command", ["run", "check-config"])
def test_a_folder_named_as_the_model_is_one_line_saying_so(command, demo_clip, tmp_path):
    folder = tmp_path / "fer_int8.tflite"
    folder.mkdir()
    extra = ["--source", str(demo_clip), "--output", str(tmp_path / "out")] if command == "run" else []
    result = fer_edge(command, "--model", str(folder), *extra)
    assert result.returncode == 1
    assert error_lines(result) == [f"fer-edge: error: model {folder} is a folder, not a .tflite file"], result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("key", "config_text"),
    [
        ("recording.output_dir", 'recording:\n  output_dir: ""\n'),
        ("model.path", 'model:\n  path: ""\n'),
        ("source.path", 'source:\n  path: " "\n'),
        ("detector.cascade", 'detector:\n  kind: haar\n  cascade: ""\n'),
    ],
    ids=["output_dir", "model", "source", "cascade"],
)
@pytest.mark.parametrize("command", ["run", "check-config"])
def test_a_blank_path_in_the_config_is_refused_not_taken_as_a_default(command, key, config_text, demo_clip, tmp_path):
    """A template whose variable was never set writes "": that is not the current folder, the bundled model,
    camera 0 or the usual Haar cascade."""
    config = tmp_path / "config.yaml"
    config.write_text(config_text)
    source = [] if key == "source.path" or command == "check-config" else ["--source", str(demo_clip)]
    extra = ["--max-frames", "5"] if command == "run" else []
    result = fer_edge(command, "--config", str(config), *source, *extra)
    assert result.returncode == 2, result.stderr
    expected = f"fer-edge: error: {key}: expected a path (leave the key out for the default), got "
    lines = error_lines(result)
    assert len(lines) == 1 and lines[0].startswith(expected), result.stderr
    assert not list(tmp_path.rglob("*.mp4")) and not list(tmp_path.rglob("*.jsonl"))


def test_check_config_fails_like_run_on_a_missing_model(tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(f"model:\n  path: {tmp_path}/none.tflite\n")
    check = fer_edge("check-config", "--config", str(config))
    run = fer_edge("run", "--config", str(config), "--no-record", "--max-frames", "1")
    for result in (check, run):
        assert result.returncode == 1
        assert error_lines(result) == [f"fer-edge: error: model not found: {tmp_path}/none.tflite"]


def test_check_config_only_warns_about_a_missing_model_when_told(tmp_path):
    """deploy/install.sh --prefix checks a config before its model is there: --model-optional, a warning, exit 0."""
    config = tmp_path / "config.yaml"
    config.write_text(f"model:\n  path: {tmp_path}/none.tflite\n")
    check = fer_edge("check-config", "--model-optional", "--config", str(config))
    assert check.returncode == 0, check.stderr
    assert f"WARNING fer_edge: model not found: {tmp_path}/none.tflite (model not checked)" in check.stderr
    assert not error_lines(check)


def test_check_config_takes_the_model_as_run_does(repo_root, tmp_path):
    """Its own error says "pass --model PATH": argparse took --model as an abbreviation of --model-optional."""
    model = repo_root / "models" / "fer_fast_int8.tflite"
    check = fer_edge("check-config", "--model", str(model))
    assert check.returncode == 0, check.stderr
    assert f"path: {model}" in check.stdout


def test_check_config_quiet_prints_no_info_lines(repo_root):
    check = fer_edge("check-config", "--quiet", "--config", str(repo_root / "configs" / "edge-default.yaml"))
    assert check.returncode == 0 and check.stdout == ""
    assert "INFO" not in check.stderr, check.stderr  # fer-edge's own, and the runtime's XNNPACK line


def test_an_output_folder_that_cannot_take_files_stops_run_as_it_stops_check_config(demo_clip, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should be")
    config = tmp_path / "config.yaml"
    config.write_text(f"source:\n  path: {demo_clip}\nrecording:\n  output_dir: {blocker / 'out'}\n")
    run = fer_edge("run", "--config", str(config), "--max-frames", "5")
    check = fer_edge("check-config", "--quiet", "--config", str(config))
    for result in (run, check):
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert error_lines(result) == [f"fer-edge: error: recording.output_dir: {blocker} is not a folder"]


def test_usage_errors_exit_2():
    assert fer_edge("fly").returncode == 2
    assert fer_edge("run", "--max-frames", "many").returncode == 2


def start_camera_paced_run(demo_clip: Path, output: Path) -> subprocess.Popen:
    """``fer-edge run --realtime`` on the demo clip in a child process, returned once its first segment is open."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fer_edge.cli",
            "run",
            "--source",
            str(demo_clip),
            "--output",
            str(output),
            "--realtime",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not list(output.glob("*.part")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    return process


def test_sigterm_ends_the_run_cleanly_and_finalizes_the_recording(demo_clip, tmp_path):
    output = tmp_path / "out"
    process = start_camera_paced_run(demo_clip, output)
    time.sleep(1.0)  # ~30 realtime frames into the clip
    process.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, stderr = process.communicate(timeout=60)
    assert time.monotonic() - sent < 5.0  # within systemd's stop budget, recording finalized
    assert process.returncode == 0, stderr
    assert "SIGTERM received" in stderr and "Traceback" not in stderr
    videos = sorted(output.glob("*.mp4"))
    assert len(videos) == 1 and not list(output.glob("*.part"))
    frames = decoded_frames(videos[0])
    assert 5 < frames < 420  # stopped part-way through the 14 s clip, and every frame written is readable


def test_a_second_run_into_a_folder_being_recorded_is_refused_and_leaves_its_files_alone(demo_clip, tmp_path):
    """Start-up recovery would take the running service's open files for a crash's leftovers; check-config still
    passes beside the service (it guards the service's restart)."""
    output = tmp_path / "out"
    process = start_camera_paced_run(demo_clip, output)
    try:
        parts = list(output.glob("*.mp4.part"))
        assert len(parts) == 1 and process.poll() is None, sorted(p.name for p in output.iterdir())
        second = fer_edge("run", "--source", str(demo_clip), "--output", str(output), "--max-frames", "5")
        config = tmp_path / "config.yaml"
        config.write_text(f"recording:\n  output_dir: {output}\n")
        check = fer_edge("check-config", "--quiet", "--config", str(config))
        assert parts[0].is_file() and (output / "events.jsonl").is_file()
        assert process.poll() is None
    finally:
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
    assert second.returncode == 1 and "Traceback" not in second.stderr
    assert error_lines(second) == [
        f"fer-edge: error: {output} is in use by another fer-edge run (pid {process.pid}); "
        "give each run a folder of its own"
    ]
    assert "interrupted run" not in second.stderr
    assert check.returncode == 0, check.stderr
    assert process.returncode == 0, stderr
    assert not list(output.glob("*.part")) and not list(output.glob("*.broken"))
    assert decoded_frames(parts[0].with_suffix("")) > 5  # the first run's segment, finished by the first run
    report = fer_edge("report", str(output), "--output", str(tmp_path / "report"))  # the lock file is no recording
    assert report.returncode == 0, report.stderr


def test_bench_prints_per_stage_timings(demo_clip):
    result = fer_edge("bench", "--source", str(demo_clip), "--frames", "40", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["frames"] == 40 and report["recording"] is True
    assert set(report["ms_per_frame"]) == {"read", "detect", "classify", "annotate", "record", "total"}
    assert report["ms_per_frame"]["total"] == pytest.approx(
        sum(v for k, v in report["ms_per_frame"].items() if k != "total")
    )
    table = fer_edge("bench", "--source", str(demo_clip), "--frames", "10", "--no-record")
    assert table.returncode == 0, table.stderr
    rows = [line.split()[0] for line in table.stdout.splitlines()[2:]]
    assert rows[:7] == ["read", "detect", "classify", "annotate", "record", "total", "fps"]


def test_no_record_writes_nothing(demo_clip, tmp_path):
    result = fer_edge("run", "--source", str(demo_clip), "--no-record", "--max-frames", "3")
    assert result.returncode == 0, result.stderr
    assert list(tmp_path.iterdir()) == []


def test_journald_logging_has_priorities_and_no_timestamps(demo_clip, tmp_path):
    plain = fer_edge("run", "--source", str(demo_clip), "--no-record", "--max-frames", "3")
    journal = fer_edge(
        "run", "--source", str(demo_clip), "--no-record", "--max-frames", "3", env={"JOURNAL_STREAM": "8:12345"}
    )
    assert plain.returncode == journal.returncode == 0
    summary = [line for line in journal.stderr.splitlines() if "processed 3 frames" in line]
    assert summary and summary[0].startswith("<6>INFO fer_edge.pipeline:")
    missing = fer_edge("run", "--source", str(tmp_path / "missing.mp4"), env={"JOURNAL_STREAM": "8:12345"})
    assert missing.returncode != 0
    assert missing.stderr.splitlines()[-1].startswith("<3>fer-edge: error: video file not found"), missing.stderr
    stamped = [line for line in plain.stderr.splitlines() if "processed 3 frames" in line]
    assert stamped and stamped[0][:2] == "20"  # 2026-...


def test_run_processes_a_file_to_its_end(demo_clip):
    result = fer_edge("run", "--source", str(demo_clip), "--no-record")
    assert result.returncode == 0, result.stderr
    frames = json.loads(demo_clip.with_suffix(".json").read_text())["frames"]
    assert f"processed {frames} frames" in result.stderr


def test_sigkill_loses_at_most_the_last_two_seconds(demo_clip, tmp_path):
    """A camera-paced run killed without warning: the unfinished segment still decodes to all but ~2 s,
    and the next start recovers it into a finished .mp4."""
    output = tmp_path / "out"
    process = start_camera_paced_run(demo_clip, output)
    events = output / "events.jsonl"
    deadline = time.monotonic() + 60  # ~3 s of camera-paced frames, however busy the machine
    while (
        time.monotonic() < deadline
        and process.poll() is None
        and (not events.exists() or len(events.read_bytes().splitlines()) < 90)
    ):
        time.sleep(0.1)
    process.kill()
    process.communicate(timeout=30)
    parts = list(output.glob("*.mp4.part"))
    assert len(parts) == 1, sorted(p.name for p in output.iterdir())
    processed = len((output / "events.jsonl").read_text().splitlines())  # one line per processed frame
    assert processed > 60
    assert decoded_frames(parts[0]) >= processed - 2 * 30  # all but the last ~2 s at 30 fps

    again = fer_edge("run", "--source", str(demo_clip), "--output", str(output), "--max-frames", "5")
    assert again.returncode == 0, again.stderr
    assert not list(output.glob("*.part"))
    recovered = output / parts[0].name.removesuffix(".part")
    assert recovered.is_file() and decoded_frames(recovered) >= processed - 2 * 30


def test_the_run_summary_names_the_recording_it_wrote(demo_clip, tmp_path):
    result = fer_edge("run", "--source", str(demo_clip), "--output", str(tmp_path), "--max-frames", "30")
    assert result.returncode == 0, result.stderr
    named = [line.split(None, 1)[1] for line in result.stdout.splitlines() if line.startswith("recording ")]
    assert named == [str(p) for p in sorted(tmp_path.glob("*.mp4"))] and len(named) == 1


# A stand-in for the apt package: the Pi camera delivers the demo frame, then libcamera gives up.
STAND_IN_PICAMERA2 = """
import cv2, os

class Picamera2:
    def __init__(self):
        self._frame = cv2.imread(os.environ["STAND_IN_FRAME"])
        self._left = int(os.environ["STAND_IN_FRAMES"])

    def create_video_configuration(self, main, controls):
        return {"main": main, "controls": controls}

    def configure(self, config):
        width, height = config["main"]["size"]
        self._frame = cv2.resize(self._frame, (width, height))

    def start(self):
        pass

    def capture_array(self, name):
        if self._left == 0:
            raise RuntimeError("Camera frontend has timed out!")
        self._left -= 1
        return self._frame.copy()

    def stop(self):
        pass

    def close(self):
        pass
"""


def test_a_pi_camera_that_stops_is_one_error_line_and_keeps_the_recording(repo_root, tmp_path):
    """libcamera can give up on a running camera (a loose ribbon cable): the run ends with one line for systemd
    to restart it, and what was recorded up to then is a finished, playable MP4."""
    stand_in = tmp_path / "site" / "picamera2"
    stand_in.mkdir(parents=True)
    (stand_in / "__init__.py").write_text(STAND_IN_PICAMERA2)
    output = tmp_path / "out"
    config = tmp_path / "config.yaml"
    config.write_text(f"source:\n  kind: picamera2\nrecording:\n  output_dir: {output}\n  presence_triggered: false\n")
    env = {
        "PYTHONPATH": os.pathsep.join([str(tmp_path / "site"), os.environ.get("PYTHONPATH", "")]),
        "STAND_IN_FRAME": str(repo_root / "docs/demo-frame.png"),
        "STAND_IN_FRAMES": "40",
    }
    result = fer_edge("run", "--config", str(config), env=env)
    assert result.returncode == 1, result.stderr
    assert error_lines(result) == ["fer-edge: error: the Pi camera stopped (Camera frontend has timed out!)"]
    assert "Traceback" not in result.stderr
    videos = sorted(output.glob("*.mp4"))
    assert len(videos) == 1 and not list(output.glob("*.part")), sorted(p.name for p in output.iterdir())
    assert decoded_frames(videos[0]) == 40
