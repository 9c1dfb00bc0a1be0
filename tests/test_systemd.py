"""The systemd unit: systemd-analyze verify on the real file, and the directives the service relies on."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "fer-edge.service"
BACKOFF = REPO / "systemd" / "fer-edge-backoff.conf"
FER_EDGE_BIN = "/opt/fer-edge/venv/bin/fer-edge"

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_analyze = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None, reason="systemd-analyze missing: install the Debian package `systemd` (.ci)"
)


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> every value in order (unit files may repeat keys), continuation lines joined."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for line in re.sub(r"\\\n", " ", text).splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    """A systemd time span (``30s``, ``5min``, ``120``) in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "min": 60, "m": 60, "h": 3600, "ms": 0.001}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", value):
        total += float(number) * units[unit]
    return total


def systemd_version() -> int:
    """The version of the systemd-analyze that verifies (the unit's reader in these tests)."""
    out = subprocess.run([SYSTEMD_ANALYZE, "--version"], capture_output=True, text=True, check=True).stdout
    return int(re.match(r"systemd (\d+)", out).group(1))


@pytest.fixture(scope="module")
def unit():
    return parse_unit(UNIT.read_text())


def verify(unit_dir: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", str(unit_dir / "fer-edge.service")], capture_output=True, text=True, timeout=60
    )


def stage_unit(tmp_path: Path) -> Path:
    """The real unit, with only the fer-edge binary pointed at an executable that exists here."""
    stub = tmp_path / "bin" / "fer-edge"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(FER_EDGE_BIN) == 2  # ExecStartPre and ExecStart; nothing else is rewritten
    (tmp_path / "fer-edge.service").write_text(text.replace(FER_EDGE_BIN, str(stub)))
    return tmp_path


@needs_analyze
def test_unit_verifies_without_any_warning(tmp_path):
    result = verify(stage_unit(tmp_path))
    assert result.returncode == 0, result.stderr
    assert (result.stdout + result.stderr).strip() == ""  # unknown keys would only be warnings: none allowed


@needs_analyze
def test_verify_of_the_unmodified_unit_complains_only_about_the_missing_binary(tmp_path):
    if Path(FER_EDGE_BIN).exists():
        pytest.skip(f"{FER_EDGE_BIN} is installed on this machine")
    shutil.copy(UNIT, tmp_path / "fer-edge.service")
    result = verify(tmp_path)
    assert result.returncode != 0
    complaints = [line for line in result.stderr.splitlines() if line.strip()]
    assert complaints and all(FER_EDGE_BIN in line and "not executable" in line for line in complaints), complaints


@needs_analyze
def test_backoff_drop_in_is_clean_on_254_and_unknown_before(tmp_path):
    """Why the back-off lives in a drop-in that install.sh adds only on systemd >= 254."""
    unit_dir = stage_unit(tmp_path)
    (unit_dir / "fer-edge.service.d").mkdir()
    shutil.copy(BACKOFF, unit_dir / "fer-edge.service.d" / "50-backoff.conf")
    result = verify(unit_dir)
    assert result.returncode == 0, result.stderr
    unknown = re.findall(r"Unknown key '(\w+)'", result.stderr)
    if systemd_version() >= 254:
        assert unknown == [], result.stderr
    else:
        assert sorted(unknown) == ["RestartMaxDelaySec", "RestartSteps"]


@needs_analyze
def test_sandbox_exposure_stays_below_3(tmp_path):
    """systemd's own score of the sandboxing (0 = locked down, 10 = none) stays below 3 (it was 4.5)."""
    unit_dir = stage_unit(tmp_path)
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=50", str(unit_dir / "fer-edge.service")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr
    exposure = re.search(r"Overall exposure level for fer-edge.service: (\d+\.\d)", result.stdout)
    assert exposure and float(exposure.group(1)) < 3.0, result.stdout[-3000:]


def test_service_is_a_watched_notify_service(unit):
    service = unit["Service"]
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert seconds(service["WatchdogSec"][0]) >= 10  # the loop pings every second while frames arrive
    assert service["Restart"] == ["on-failure"]
    assert service["KillSignal"] == ["SIGTERM"]
    assert seconds(service["TimeoutStopSec"][0]) == 15  # > the 5 s a recording needs to finalize
    assert service["ExecStart"] == [f"{FER_EDGE_BIN} run --wait-for-camera --config /etc/fer-edge/config.yaml"]
    assert service["ExecStartPre"] == [f"{FER_EDGE_BIN} check-config --quiet --config /etc/fer-edge/config.yaml"]
    assert "PYTHONUNBUFFERED=1" in " ".join(service["Environment"]).split()


def test_automatic_restarts_never_trip_the_start_limit(unit):
    restart_s = seconds(unit["Service"]["RestartSec"][0])
    interval_s = seconds(unit["Unit"]["StartLimitIntervalSec"][0])
    burst = int(unit["Unit"]["StartLimitBurst"][0])
    most_automatic_starts = int(interval_s // restart_s) + 1  # even if every start fails at once
    assert burst > most_automatic_starts
    backoff = parse_unit(BACKOFF.read_text())["Service"]
    assert seconds(backoff["RestartMaxDelaySec"][0]) > restart_s  # back-off only ever lengthens the delay


def test_service_runs_unprivileged_with_camera_access(unit):
    service = unit["Service"]
    assert service["User"] == ["fer-edge"] and service["Group"] == ["fer-edge"]
    assert {"video", "render"} <= set(" ".join(service["SupplementaryGroups"]).split())
    assert "PrivateDevices" not in service  # it would hide /dev/dma_heap, /dev/video*, /dev/media*
    # ProtectClock= closes the device list (it allows char-rtc): the camera's devices must be on it
    assert service["ProtectClock"] == ["yes"]
    assert {"char-video4linux rw", "char-media rw", "char-dma_heap rw", "char-drm rw"} <= set(service["DeviceAllow"])
    assert service["StateDirectory"] == ["fer-edge"]
    assert service["ConfigurationDirectory"] == ["fer-edge"]
    assert service["ProtectSystem"] == ["strict"]
    for key in ("ProtectHome", "PrivateTmp", "NoNewPrivileges"):
        assert service[key] == ["yes"], key
    assert service["MemoryMax"] and service["Nice"]
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


def test_the_sandbox_keeps_what_the_camera_the_web_page_and_mqtt_need(unit):
    service = unit["Service"]
    assert service["SystemCallFilter"] == ["@system-service", "~@privileged"]
    assert service["SystemCallErrorNumber"] == ["EPERM"]  # a refused call is an error, not a SIGSYS kill
    assert service["SystemCallArchitectures"] == ["native"]
    assert service["RestrictAddressFamilies"] == ["AF_UNIX AF_INET AF_INET6 AF_NETLINK"]
    for key, value in (
        ("ProtectKernelLogs", "yes"),
        ("ProtectProc", "invisible"),
        ("RemoveIPC", "yes"),
        ("PrivateMounts", "yes"),
        ("MemoryDenyWriteExecute", "yes"),
        ("LockPersonality", "yes"),
    ):
        assert service[key] == [value], key
    for left_out in ("PrivateNetwork", "IPAddressDeny", "PrivateUsers", "ProcSubset"):
        assert left_out not in service
        assert re.search(rf"^#\s+{left_out}=.*\S", UNIT.read_text(), re.MULTILINE), f"no reason for {left_out}"
