"""Device config: defaults, the shipped YAML, rejection with key paths, check-config, model lookup."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import numpy as np
import pytest
import yaml

import fer_edge.runtime as runtime_module
from fer_edge.cli import main
from fer_edge.config import Config, load_config, model_candidates, resolve_model_path, to_dict, to_yaml
from fer_edge.config import device as config_module
from fer_edge.errors import ConfigError, ModelError
from fer_edge.types import Box, Face
from fer_edge.vision.annotate import OverlayAnnotator
from fer_edge.vision.classifier import ExpressionClassifier


def write(tmp_path, text: str):
    path = tmp_path / "edge.yaml"
    path.write_text(text)
    return path


def test_defaults_load_without_a_file():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.source.kind == "auto" and cfg.source.device == "0"
    assert cfg.smoothing.time_constant_s == 0.2 and cfg.detector.kind == "blazeface"
    assert cfg.overlay.box_color == (0, 255, 0)
    assert cfg.recording.codec == "auto"


def test_shipped_default_yaml_lists_every_key_with_its_default(repo_root):
    path = repo_root / "configs" / "edge-default.yaml"
    raw = yaml.safe_load(path.read_text())
    defaults = to_dict(Config())

    def keys(tree, prefix=""):
        out = set()
        for key, value in tree.items():
            out.add(prefix + key)
            if isinstance(value, dict):
                out |= keys(value, prefix + key + ".")
        return out

    assert keys(raw) == keys(defaults)
    assert load_config(path) == Config()


def test_config_is_frozen():
    cfg = load_config(None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.source.fps = 10


def test_values_and_overrides_are_applied(tmp_path):
    path = write(tmp_path, "source:\n  kind: file\n  path: clip.mp4\noverlay:\n  box_color: [255, 0, 0]\n")
    cfg = load_config(path, {"source.fps": 15, "recording.output_dir": "elsewhere"})
    assert cfg.source.kind == "file" and cfg.source.path == "clip.mp4"
    assert cfg.source.fps == 15.0 and isinstance(cfg.source.fps, float)
    assert cfg.overlay.box_color == (255, 0, 0)
    assert cfg.recording.output_dir == "elsewhere"
    assert cfg.detector == Config().detector


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("recording:\n  segment_secs: 10\n", "recording.segment_secs: unknown key"),
        ("recordings:\n  enabled: false\n", "recordings: unknown key"),
        ("source:\n  fps: fast\n", "source.fps: expected a number, got 'fast'"),
        ("source:\n  width: true\n", "source.width: expected an integer, got True"),
        ("source:\n  width: 640.5\n", "source.width: expected an integer, got 640.5"),
        ("overlay:\n  enabled: 1\n", "overlay.enabled: expected true or false, got 1"),
        ("overlay:\n  box_color: [0, 255]\n", "overlay.box_color: expected a list of 3 integers, got [0, 255]"),
        ("overlay:\n  box_color: [0, 255, 300]\n", "overlay.box_color: expected three integers 0-255"),
        ("recording:\n  segment_seconds: -3\n", "recording.segment_seconds: expected a positive number, got -3"),
        ("smoothing:\n  time_constant_s: -1\n", "smoothing.time_constant_s: expected a number in [0, 60], got -1"),
        ("smoothing:\n  min_dwell_s: 1000\n", "smoothing.min_dwell_s: expected a number in [0, 60], got 1000"),
        ("tracking:\n  max_missed: -1\n", "tracking.max_missed: expected an integer 0-10000, got -1"),
        ("detector:\n  scale_factor: 1.0\n", "detector.scale_factor: expected a number in [1.01, 2], got 1.0"),
        ("detector:\n  scale_factor: 1.0e+300\n", "detector.scale_factor: expected a number in [1.01, 2], got 1e+300"),
        ("detector:\n  min_face: 100000000000\n", "detector.min_face: expected an integer 8-4096, got 100000000000"),
        (
            "detector:\n  min_neighbors: 100000000000\n",
            "detector.min_neighbors: expected an integer 0-100, got 100000000000",
        ),
        ("detector:\n  kind: yolo\n", "detector.kind: expected one of blazeface, haar, got 'yolo'"),
        ("detector:\n  min_score: 1\n", "detector.min_score: expected a number in (0, 1), got 1"),
        ("model:\n  max_turn: 2\n", "model.max_turn: expected a number in [0, 1], got 2"),
        ("privacy:\n  mode: smudge\n", "privacy.mode: expected one of off, blur, pixelate, got 'smudge'"),
        ("privacy:\n  hold_s: 30\n", "privacy.hold_s: expected a number in [0, 5], got 30"),
        ("source:\n  kind: webcam\n", "source.kind: expected one of auto, picamera2, opencv, file, images"),
        # a superscript two is a digit to str.isdigit, not to int()
        ('web:\n  listen: "127.0.0.1:\u00b2"\n', "web.listen: expected host:port with a port 1-65535"),
        ("logging:\n  level: LOUD\n", "logging.level: expected one of DEBUG, INFO, WARNING, ERROR"),
        ("source: 5\n", "source: expected a mapping, got 5"),
        ("source:\n  reopen_initial_s: 10\n  reopen_max_s: 5\n", "source.reopen_max_s: expected a number >="),
        # Upper bounds: each of these passed as "positive", then crashed the run (cv2.error, a segfault)
        ("overlay:\n  thickness: 100000\n", "overlay.thickness: expected an integer 1-50, got 100000"),
        ("overlay:\n  thickness: 51\n", "overlay.thickness: expected an integer 1-50, got 51"),
        ("overlay:\n  thickness: 0\n", "overlay.thickness: expected an integer 1-50, got 0"),
        ("overlay:\n  font_scale: 1.0e+9\n", "overlay.font_scale: expected a number in (0, 10], got 1000000000.0"),
        ("overlay:\n  font_scale: 10.5\n", "overlay.font_scale: expected a number in (0, 10], got 10.5"),
        ("overlay:\n  font_scale: 0\n", "overlay.font_scale: expected a number in (0, 10], got 0"),
        ("model:\n  threads: 100000\n", "model.threads: expected an integer 1-64, got 100000"),
        ("model:\n  threads: 65\n", "model.threads: expected an integer 1-64, got 65"),
        ("model:\n  threads: 0\n", "model.threads: expected an integer 1-64, got 0"),
        ("source:\n  fps: 1e300\n", "source.fps: expected a number in (0, 1000], got 1e+300"),
        ("source:\n  fps: 1001\n", "source.fps: expected a number in (0, 1000], got 1001"),
        ("source:\n  fps: " + "9" * 400 + "\n", "source.fps: expected a number, got 99999"),
        ("source:\n  width: 100000\n", "source.width: expected an integer 1-8192, got 100000"),
        ("source:\n  height: 0\n", "source.height: expected an integer 1-8192, got 0"),
        ("source:\n  reopen_initial_s: 1e9\n", "source.reopen_initial_s: expected a number in (0, 3600]"),
        ("source:\n  reopen_max_s: 3601\n", "source.reopen_max_s: expected a number in (0, 3600], got 3601"),
        ("source:\n  device: -1\n", "source.device: expected a camera index 0-1023 or a URL, got -1"),
        ('source:\n  device: "rtsp://cam\\nx"\n', "source.device: expected a camera index, a /dev/video path"),
        ("logging:\n  status_interval_s: 1e12\n", "logging.status_interval_s: expected a number in (0, 86400]"),
    ],
)
def test_bad_values_are_rejected_naming_the_key_path(tmp_path, text, message):
    with pytest.raises(ConfigError) as caught:
        load_config(write(tmp_path, text))
    assert str(caught.value).startswith(message)
    assert "\n" not in str(caught.value)


def test_yaml_1_2_exponent_floats_are_numbers(tmp_path):
    """YAML 1.1 (PyYAML) needs a dot in an exponent float: `1e3` was the string '1e3'."""
    cfg = load_config(write(tmp_path, "source:\n  fps: 2.5e1\n  reopen_max_s: 1e3\noverlay:\n  font_scale: 5E-1\n"))
    assert (cfg.source.fps, cfg.source.reopen_max_s, cfg.overlay.font_scale) == (25.0, 1000.0, 0.5)
    assert load_config(write(tmp_path, "source:\n  device: 1e3x\n")).source.device == "1e3x"


def test_an_error_line_shows_a_long_value_cut_short(tmp_path):
    path = write(tmp_path, "source:\n  path: [" + ", ".join(["x" * 50] * 1000) + "]\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(caught.value).startswith("source.path: expected a string or null, got ['xxx")
    assert len(str(caught.value)) < 200 and str(caught.value).endswith("...")


def test_an_error_line_never_shows_a_camera_password(tmp_path):
    path = write(tmp_path, 'source:\n  device: "rtsp://admin:s3cret@10.0.0.2/stream\\n"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "s3cret" not in str(caught.value) and "rtsp://admin:***@10.0.0.2/stream" in str(caught.value)


def test_a_config_larger_than_a_megabyte_is_refused_before_it_is_parsed(tmp_path):
    path = write(tmp_path, "# a comment line that YAML would happily skip\n" * 25_000)  # 1.15 MB, valid YAML
    with pytest.raises(ConfigError, match=r"edge.yaml: 1150000 bytes, more than a config can be \(1000000\)"):
        load_config(path)


def test_a_config_without_a_size_is_read_only_up_to_the_bound(tmp_path):
    with pytest.raises(ConfigError, match="more than 1000000 bytes"):
        load_config("/dev/zero")  # st_size 0, endless: read whole, it would fill the memory


# Nine levels of nine aliases: 9**9 strings once expanded, from 500 bytes.
ALIAS_BOMB = 'a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]\n' + "".join(
    f"{b}: &{b} [{', '.join([f'*{a}'] * 9)}]\n" for a, b in zip("abcdefgh", "bcdefghi")
)


def test_an_alias_bomb_is_one_error_line(tmp_path):
    with pytest.raises(ConfigError, match="edge.yaml: expands to more than 10000 values"):
        load_config(write(tmp_path, ALIAS_BOMB))


def test_an_alias_bomb_in_a_wrong_place_is_one_short_error_line_from_the_cli(tmp_path):
    """Where it fails validation, the value was quoted whole: the line took all memory. Run with 2 GB at most."""
    levels = ['&a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]'] + [
        f"&{b} [{', '.join([f'*{a}'] * 9)}]" for a, b in zip("abcdefgh", "bcdefghi")
    ]
    path = write(tmp_path, "source:\n  path: [" + ", ".join(levels) + "]\n")
    limit = "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30)); "
    code = limit + "from fer_edge.cli import main; sys.exit(main(sys.argv[1:]))"
    result = subprocess.run(
        [sys.executable, "-c", code, "check-config", "--config", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2, result.stderr[-500:]
    assert result.stderr.strip().splitlines() == [
        f"fer-edge: error: {path}: expands to more than 10000 values (aliases nested in aliases?)"
    ]


def test_a_value_that_contains_itself_is_one_error_line(tmp_path):
    with pytest.raises(ConfigError, match="a value contains itself through an alias"):
        load_config(write(tmp_path, "source:\n  path: &p [x, *p]\n"))


def test_aliases_within_the_bound_still_work(tmp_path):
    cfg = load_config(write(tmp_path, "overlay:\n  box_color: &green [0, 255, 0]\n  text_color: *green\n"))
    assert cfg.overlay.text_color == cfg.overlay.box_color == (0, 255, 0)


def test_a_section_given_twice_is_refused_not_half_dropped(tmp_path):
    """YAML keeps the last of two equal keys: the second privacy section would turn the blur off unseen."""
    text = "privacy:\n  mode: blur\nmodel:\n  threads: 2\nprivacy:\n  hold_s: 0.5\n"
    with pytest.raises(ConfigError, match=r"edge.yaml: line 5: privacy given again \(first on line 1\)"):
        load_config(write(tmp_path, text))
    inner = "overlay:\n  box_color: [0, 255, 0]\n  thickness: 2\n  box_color: [0, 0, 255]\n"
    with pytest.raises(ConfigError, match=r"line 4: overlay.box_color given again \(first on line 2\)"):
        load_config(write(tmp_path, inner))


def test_a_merged_mapping_may_still_be_overridden_key_by_key(tmp_path):
    text = "overlay:\n  <<: &look {thickness: 3, font_scale: 0.5}\n  thickness: 1\nprivacy:\n  <<: *look\n"
    with pytest.raises(ConfigError, match="privacy.thickness: unknown key"):  # the merge itself was read
        load_config(write(tmp_path, text))
    cfg = load_config(write(tmp_path, "overlay:\n  <<: &look {thickness: 3, font_scale: 0.5}\n  thickness: 1\n"))
    assert (cfg.overlay.thickness, cfg.overlay.font_scale) == (1, 0.5)


def test_boundary_values_are_accepted(tmp_path):
    text = "smoothing:\n  time_constant_s: 0\n  hysteresis: 0\ntracking:\n  max_missed: 0\n"
    cfg = load_config(write(tmp_path, text))
    assert cfg.smoothing.time_constant_s == 0.0 and cfg.smoothing.hysteresis == 0.0 and cfg.tracking.max_missed == 0


def test_the_largest_accepted_overlay_and_thread_values_work(tmp_path, model_path, monkeypatch):
    """The upper bounds are usable: the annotator draws with them and the interpreter runs with 64 threads."""
    cfg = load_config(write(tmp_path, "overlay:\n  thickness: 50\n  font_scale: 10\nmodel:\n  threads: 64\n"))
    assert (cfg.overlay.thickness, cfg.overlay.font_scale, cfg.model.threads) == (50, 10.0, 64)
    interpreter_class, runtime = runtime_module.load_interpreter_class()
    threads_asked = []

    def recording_interpreter(**kwargs):
        threads_asked.append(kwargs.get("num_threads"))
        return interpreter_class(**kwargs)

    monkeypatch.setattr(runtime_module, "load_interpreter_class", lambda: (recording_interpreter, runtime))
    classifier = ExpressionClassifier(model_path, threads=cfg.model.threads)
    assert threads_asked == [64]
    gray = np.full((360, 640), 128, np.uint8)
    prediction = classifier.classify(gray, Box(300, 100, 120, 120))
    image = np.zeros((360, 640, 3), np.uint8)
    boxes = (Box(300, 100, 120, 120), Box(0, 0, 40, 40), Box(600, 320, 40, 40))  # middle, corners
    for box in boxes:
        OverlayAnnotator.from_config(cfg.overlay).draw(image, [Face(box, prediction, track_id=7)])
    for box in boxes:  # each box's outline is drawn, clipped to the frame where it leaves it
        assert image[min(box.y2, 359), box.x : min(box.x2, 640)].any(), box


def test_unquoted_off_means_off(tmp_path):
    # YAML 1.1 reads a bare `off` as false; privacy.mode accepts it as "off".
    assert load_config(write(tmp_path, "privacy:\n  mode: off\n")).privacy.mode == "off"


def test_camera_device_may_be_an_integer_or_url(tmp_path):
    assert load_config(write(tmp_path, "source:\n  device: 2\n")).source.device == 2
    assert load_config(None, {"source.device": "rtsp://cam/stream"}).source.device == "rtsp://cam/stream"


def test_unreadable_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "source: [unclosed\n"))
    with pytest.raises(ConfigError, match="expected a mapping of sections"):
        load_config(write(tmp_path, "- a\n- b\n"))
    not_utf8 = tmp_path / "latin1.yaml"
    not_utf8.write_bytes(b"\xff\xfe\x00")
    with pytest.raises(ConfigError) as caught:
        load_config(not_utf8)
    assert str(caught.value) == f"{not_utf8}: not UTF-8 text (invalid start byte at byte 0)"
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(write(tmp_path, "source: " + "[" * 5000 + "\n"))
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "source:\nmodel:\n"), {"source.fps": 12}).source.fps == 12.0


def test_resolved_yaml_loads_back_to_the_same_config(tmp_path):
    cfg = load_config(None, {"source.path": "x.mp4", "overlay.text_color": [1, 2, 3]})
    assert load_config(write(tmp_path, to_yaml(cfg))) == cfg


def test_model_lookup_order(tmp_path, monkeypatch, repo_root):
    monkeypatch.delenv("FER_EDGE_MODEL", raising=False)
    monkeypatch.chdir(tmp_path)
    assert model_candidates("my.tflite") == [config_module.Path("my.tflite")]
    candidates = [str(p) for p in model_candidates(None)]
    assert candidates == [
        str(repo_root / "models" / "fer_int8.tflite"),
        str(tmp_path / "models" / "fer_int8.tflite"),
        "/var/lib/fer-edge/models/current/model.tflite",
        "/usr/share/fer-edge/models/fer_int8.tflite",
    ]
    assert resolve_model_path(None) == repo_root / "models" / "fer_int8.tflite"
    monkeypatch.setenv("FER_EDGE_MODEL", str(tmp_path / "env.tflite"))
    assert resolve_model_path(None) == tmp_path / "env.tflite"
    assert resolve_model_path("configured.tflite") == config_module.Path("configured.tflite")


def test_no_model_anywhere_lists_the_places_tried(monkeypatch, tmp_path):
    monkeypatch.delenv("FER_EDGE_MODEL", raising=False)
    monkeypatch.setattr(
        config_module, "__file__", str(tmp_path / "checkout" / "edge" / "fer_edge" / "config" / "device.py")
    )
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ModelError) as caught:
        resolve_model_path(None)
    message = str(caught.value)
    assert str(tmp_path / "checkout" / "models" / "fer_int8.tflite") in message
    assert str(tmp_path / "models" / "fer_int8.tflite") in message
    assert "--model" in message
    assert "/usr/share/fer-edge/models/fer_int8.tflite" in message
    assert "/var/lib/fer-edge/models/current/model.tflite" in message


def test_check_config_prints_the_resolved_config(capsys, repo_root):
    assert main(["check-config", "--config", str(repo_root / "configs" / "edge-default.yaml")]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    expected = to_dict(Config())
    expected["model"]["path"] = str(repo_root / "models" / "fer_int8.tflite")
    assert printed == expected


def test_check_config_cli_exit_codes(tmp_path):
    good = subprocess.run(
        [sys.executable, "-m", "fer_edge.cli", "check-config"], capture_output=True, text=True, timeout=60
    )
    assert good.returncode == 0, good.stderr
    assert yaml.safe_load(good.stdout)["source"]["kind"] == "auto"

    bad = write(tmp_path, "recording:\n  segment_seconds: -3\n")
    result = subprocess.run(
        [sys.executable, "-m", "fer_edge.cli", "check-config", "--config", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "fer-edge: error: recording.segment_seconds: expected a positive number, got -3"
    ]


def test_a_key_of_an_earlier_version_names_its_replacement(tmp_path):
    with pytest.raises(ConfigError, match=r"^detector.min_size: replaced by detector.min_face"):
        load_config(write(tmp_path, "detector:\n  min_size: 40\n"))
    with pytest.raises(ConfigError, match=r"^smoothing.alpha: replaced by smoothing.time_constant_s \(seconds"):
        load_config(write(tmp_path, "smoothing:\n  alpha: 0.3\n"))


def test_an_upgraded_device_keeps_starting_with_a_retired_key_at_its_old_default(tmp_path, caplog):
    """Earlier templates wrote ``model.align: false``, which is now the only behaviour: it is dropped with a
    warning; asking for aligned crops, which are gone, is refused naming the key."""
    with caplog.at_level("WARNING", logger="fer_edge.config.device"):
        cfg = load_config(write(tmp_path, "model:\n  align: false\n  threads: 2\n"))
    assert cfg.model.threads == 2
    assert "model.align: no longer used" in caplog.text
    with pytest.raises(ConfigError, match=r"^model\.align: replaced by the box crop always"):
        load_config(write(tmp_path, "model:\n  align: true\n"))
