"""Several cameras on one Pi: the template unit fer-edge@.service, its slice, and install.sh --instance."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml
from test_deploy import NOT_FROM_APT, SYSTEM_PYTHON, _site_packages, _stubbed_system
from test_systemd import FER_EDGE_BIN, SYSTEMD_ANALYZE, needs_analyze, parse_unit, seconds

REPO = Path(__file__).resolve().parents[1]
TEMPLATE = REPO / "systemd" / "fer-edge@.service"
PLAIN = REPO / "systemd" / "fer-edge.service"
SLICE = REPO / "systemd" / "fer-edge.slice"
INSTALL = REPO / "deploy" / "install.sh"
CLIP = REPO / "assets" / "demo.mp4"
EDGE_VENV = REPO / ".venv-edge"
PI4_CORES, PI4_MEMORY_MB = 4, 2048  # the smallest Pi 4 the docs size the slice for


def megabytes(value: str) -> float:
    number, unit = re.fullmatch(r"(\d+(?:\.\d+)?)([KMG]?)", value).groups()
    return float(number) * {"K": 1 / 1024, "": 1 / 2**20, "M": 1, "G": 1024}[unit]


def percent(value: str) -> float:
    return float(value.rstrip("%"))


@needs_analyze
def test_the_template_and_the_slice_verify_without_any_warning(tmp_path):
    stub = tmp_path / "bin" / "fer-edge"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = TEMPLATE.read_text()
    assert text.count(FER_EDGE_BIN) == 2
    (tmp_path / "fer-edge@.service").write_text(text.replace(FER_EDGE_BIN, str(stub)))
    shutil.copy(SLICE, tmp_path / "fer-edge.slice")
    for unit in ("fer-edge@.service", "fer-edge@door.service", "fer-edge.slice"):
        result = subprocess.run(
            [SYSTEMD_ANALYZE, "verify", unit], cwd=tmp_path, capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0 and (result.stdout + result.stderr).strip() == "", (unit, result.stderr)
    # and it can fail: a key systemd does not know is reported
    (tmp_path / "fer-edge.slice").write_text(SLICE.read_text().replace("CPUQuota=", "CPUQuotta="))
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "verify", "fer-edge.slice"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert "CPUQuotta" in result.stderr


def test_the_template_is_the_plain_unit_with_per_instance_paths_a_slice_and_a_cpu_limit():
    plain, template = parse_unit(PLAIN.read_text()), parse_unit(TEMPLATE.read_text())
    differing = {
        (section, key)
        for section in plain.keys() | template.keys()
        for key in plain.get(section, {}).keys() | template.get(section, {}).keys()
        if plain.get(section, {}).get(key) != template.get(section, {}).get(key)
    }
    assert differing == {
        ("Unit", "Description"),
        ("Service", "StateDirectory"),
        ("Service", "WorkingDirectory"),
        ("Service", "ExecStartPre"),
        ("Service", "ExecStart"),
        ("Service", "Slice"),
        ("Service", "CPUQuota"),
    }
    service = template["Service"]
    assert service["ExecStart"] == [f"{FER_EDGE_BIN} run --wait-for-camera --config /etc/fer-edge/%i.yaml"]
    assert service["StateDirectory"] == ["fer-edge/%i"] and service["WorkingDirectory"] == ["/var/lib/fer-edge/%i"]
    assert service["Slice"] == ["fer-edge.slice"]


def test_the_limits_add_up_on_a_pi_4():
    service = parse_unit(TEMPLATE.read_text())["Service"]
    group = parse_unit(SLICE.read_text())["Slice"]
    per_cpu, per_memory = percent(service["CPUQuota"][0]), megabytes(service["MemoryMax"][0])
    all_cpu, all_memory = percent(group["CPUQuota"][0]), megabytes(group["MemoryMax"][0])
    assert megabytes(service["MemoryHigh"][0]) < per_memory and megabytes(group["MemoryHigh"][0]) < all_memory
    # the slice leaves a core and 512 MB to the system; three instances fit in it without squeezing each other
    assert all_cpu <= (PI4_CORES - 1) * 100 and all_memory <= PI4_MEMORY_MB - 512
    assert 3 * per_cpu <= all_cpu and 3 * per_memory <= all_memory
    assert seconds(parse_unit(TEMPLATE.read_text())["Service"]["TimeoutStopSec"][0]) == 15


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_instances_installed_side_by_side_each_write_their_own_folder(tmp_path):
    check = "import ensurepip, setuptools, wheel, yaml"
    if not EDGE_VENV.exists() or subprocess.run([SYSTEM_PYTHON, "-c", check], capture_output=True).returncode:
        pytest.skip("!!! INSTANCE TEST NOT RUN: needs .venv-edge and python3-venv, -setuptools, -wheel, -yaml !!!")
    env, state = _stubbed_system(tmp_path / "system")
    dist_packages = tmp_path / "dist-packages"
    dist_packages.mkdir()
    for entry in _site_packages(EDGE_VENV).iterdir():
        if entry.suffix == ".pth" or entry.name == "__pycache__" or entry.name.startswith(NOT_FROM_APT):
            continue
        (dist_packages / entry.name).symlink_to(entry)
    env |= {"PYTHONPATH": str(dist_packages), "PIP_NO_INDEX": "1"}
    root = tmp_path / "root"
    ports = {"door": _free_port(), "till": _free_port()}
    for name, camera in (("door", "0"), ("till", "2")):
        command = ["bash", str(INSTALL), "--prefix", str(root), "--instance", name, "--camera", camera]
        command += ["--web-port", str(ports[name])]
        result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        assert f"config ok: /etc/fer-edge/{name}.yaml" in result.stderr
    calls = (state / "calls.log").read_text().splitlines()
    started = [c.split()[2] for c in calls if c.split()[:2] in (["systemctl", "start"], ["systemctl", "restart"])]
    assert started == ["fer-edge@door", "fer-edge@till"]  # (the stub has one active flag: the second is a restart)
    assert not (root / "etc/fer-edge/config.yaml").exists()  # the plain service's config is not written
    assert (root / "etc/systemd/system/fer-edge@.service").read_text() == TEMPLATE.read_text()

    exec_start = parse_unit(TEMPLATE.read_text())["Service"]["ExecStart"][0]
    processes = {}
    for name in ports:
        config_file = root / f"etc/fer-edge/{name}.yaml"
        cfg = yaml.safe_load(config_file.read_text())
        assert cfg["recording"]["output_dir"] == f"/var/lib/fer-edge/{name}"
        assert cfg["web"] == {**cfg["web"], "enabled": True, "listen": f"127.0.0.1:{ports[name]}"}
        assert cfg["mqtt"]["device_id"] == f"{socket.gethostname()}-{name}"
        assert cfg["source"]["device"] == {"door": "0", "till": "2"}[name]
        assert cfg["source"]["kind"] == "opencv"  # not the Pi camera, which kind auto takes wherever it is installed
        # what systemd would give the instance: the unit's paths under the scratch root; the clip for the camera
        cfg["model"]["path"] = str(root / cfg["model"]["path"].lstrip("/"))
        cfg["recording"].update(output_dir=str(root / f"var/lib/fer-edge/{name}"), presence_triggered=False)
        cfg["source"].update(kind="file", path=str(CLIP))
        config_file.write_text(yaml.safe_dump(cfg))
        argv = exec_start.replace("%i", name).replace("/etc/fer-edge", str(root / "etc/fer-edge"))
        argv = argv.replace("/opt/fer-edge", str(root / "opt/fer-edge")).split()
        processes[name] = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline, both_running = time.monotonic() + 60, False
        while time.monotonic() < deadline and not both_running:
            both_running = all(
                p.poll() is None and list((root / f"var/lib/fer-edge/{n}").glob("*.mp4*")) for n, p in processes.items()
            )
            time.sleep(0.2)
        assert both_running, {n: p.poll() for n, p in processes.items()}
        outputs = {name: p.communicate(timeout=120) for name, p in processes.items()}
    finally:
        for p in processes.values():
            if p.poll() is None:
                p.kill()
    for name, p in processes.items():
        assert p.returncode == 0, outputs[name][1][-2000:]
        folder = root / f"var/lib/fer-edge/{name}"
        kept = ("index.sqlite3", ".fer-edge.lock")  # the review index and the run's lock beside the recordings
        recorded = sorted(f.suffix for f in folder.iterdir() if f.is_file() and not f.name.startswith(kept))
        assert recorded == [".jsonl", ".mp4"], list(folder.iterdir())
        assert str(folder) in outputs[name][1] or str(folder) in outputs[name][0]
    assert os.path.isdir(root / "var/lib/fer-edge/recordings")  # the plain service's folder stays empty
    assert not list((root / "var/lib/fer-edge/recordings").iterdir())
