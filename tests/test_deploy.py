"""The deploy path for real: deploy/deploy.sh over ssh to a stand-in Pi, install.sh into a scratch root.

The stand-in Pi is an sshd on 127.0.0.1 (random port, keys made here, run as the current user) whose
sessions get, through sshd's SetEnv:
- PATH with logging stubs first for apt-get, systemctl, journalctl, useradd, usermod, groupadd, getent and
  chown (they keep a little state: users, groups, whether the service is active), so nothing on this
  machine is changed;
- PYTHONPATH with a folder that plays apt's dist-packages (NumPy, OpenCV, PyAV, LiteRT, PyYAML linked
  from .venv-edge), and PIP_NO_INDEX=1: pip must be satisfied without PyPI, as on a Pi after apt.
install.sh runs with --prefix <scratch root> and builds a real venv with the system Python; the test
then runs the installed `fer-edge` on assets/demo.mp4. What cannot run here (real apt, systemctl, the
camera) is listed in docs/DEPLOY.md.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy" / "deploy.sh"
DEPLOY_MODEL = REPO / "deploy" / "deploy-model.sh"
INSTALL = REPO / "deploy" / "install.sh"
MODEL = REPO / "models" / "fer_int8.tflite"
CLIP = REPO / "assets" / "demo.mp4"
EDGE_VENV = REPO / ".venv-edge"
SYSTEM_PYTHON = "/usr/bin/python3"
SSHD = "/usr/sbin/sshd"

# One multi-call stub, linked under each system command's name.
STUB = r"""#!/bin/bash
state="${FAKE_PI_STATE:?FAKE_PI_STATE not set}"
name="$(basename "$0")"
printf '%s %s\n' "$name" "$*" >> "$state/calls.log"
last="${!#}"
member_add() {  # member_add GROUP USER
    awk -F: -v OFS=: -v g="$1" -v u="$2" '$1 == g { $4 = ($4 == "" ? u : $4 "," u) } 1' "$state/group" \
        > "$state/group.tmp" && mv "$state/group.tmp" "$state/group"
}
case "$name" in
    systemctl)
        case "$1" in
            --version) echo "systemd $(cat "$state/systemd-version") (fake)"; echo "+PAM +SECCOMP" ;;
            is-active)  # one flag for every unit, or a unit's own (state/active.UNIT) where a test made one
                flag="$state/active"; [ ! -e "$state/active.$last" ] || flag="$state/active.$last"
                [ "$(cat "$flag" 2>/dev/null)" = active ] ;;
            start|restart)
                flag="$state/active"; [ ! -e "$state/active.$2" ] || flag="$state/active.$2"
                if [ -e "$state/fail-next-start" ] || [ -e "$state/fail-next-start.$2" ]; then
                    rm -f "$state/fail-next-start" "$state/fail-next-start.$2"; echo "inactive" > "$flag"
                    echo "Job for $2.service failed because the control process exited with error code." >&2
                    exit 1
                fi
                echo active > "$flag" ;;
            is-enabled)  # enabled unless a test disabled the unit (state/enabled.UNIT)
                [ "$(cat "$state/enabled.$last" 2>/dev/null || echo enabled)" = enabled ] ;;
            enable|disable)
                case " $* " in *" --now "*) [ "$1" = enable ] && echo active > "$state/active" \
                    || echo inactive > "$state/active" ;; esac ;;
            status) echo "* fer-edge.service - fer-edge (stub)"; echo "   Active: $(cat "$state/active" 2>/dev/null)" ;;
        esac ;;
    journalctl) echo "-- stub journal: no entries --" ;;
    getent) grep "^$last:" "$state/$1" || exit 2 ;;
    useradd)
        echo "$last:x:990:990:fer-edge:/var/lib/fer-edge:/usr/sbin/nologin" >> "$state/passwd"
        echo "$last:x:990:" >> "$state/group"
        case " $* " in *" --groups video "*) member_add video "$last" ;; esac ;;
    usermod) member_add video "$last" ;;
    groupadd) echo "$last:x:989:" >> "$state/group" ;;
    apt-get|chown) ;;
esac
"""
STUBBED = ("apt-get", "systemctl", "journalctl", "useradd", "usermod", "groupadd", "getent", "chown")
# What apt's dist-packages would not hold (the venv brings its own pip and setuptools).
NOT_FROM_APT = (
    "pip",
    "setuptools",
    "_distutils_hack",
    "pkg_resources",
    "wheel",
    "fer_edge",
    "fer-edge",
    "__editable__",
)


def _stubbed_system(base: Path) -> tuple[dict[str, str], Path]:
    """Logging stubs for the system commands (and a sudo that just runs its command) first on PATH, with
    their own state: the environment of a fake Pi for install.sh and deploy.sh run without sshd."""
    stubs, state = base / "stubs", base / "state"
    stubs.mkdir(parents=True)
    state.mkdir()
    (stubs / "fake-pi-command").write_text(STUB)
    (stubs / "fake-pi-command").chmod(0o755)
    for name in STUBBED:
        (stubs / name).symlink_to("fake-pi-command")
    (stubs / "sudo").write_text('#!/bin/sh\nexec "$@"\n')
    (stubs / "sudo").chmod(0o755)
    (state / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (state / "group").write_text("root:x:0:\nvideo:x:44:\n")
    (state / "systemd-version").write_text("252\n")
    return {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "FAKE_PI_STATE": str(state)}, state


def _ensure_prerequisites() -> None:
    # the Debian packages are installed by .ci/run (or by hand), never from inside a test
    if not Path(SSHD).exists():
        pytest.skip(
            "!!! DEPLOY TEST NOT RUN: no sshd: apt-get install openssh-server openssh-client (.ci/run does) !!!"
        )
    check = "import ensurepip, setuptools, wheel, yaml"
    if subprocess.run([SYSTEM_PYTHON, "-c", check], capture_output=True).returncode != 0:
        pytest.skip(
            f"!!! DEPLOY TEST NOT RUN: the stand-in Pi needs {SYSTEM_PYTHON} with venv, setuptools, wheel "
            "and yaml: apt-get install python3-venv python3-setuptools python3-wheel python3-yaml "
            "(.ci/run does) !!!"
        )
    system_version = subprocess.run(
        [SYSTEM_PYTHON, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True
    ).stdout.split()
    edge_site = _site_packages(EDGE_VENV)
    if edge_site.parent.name != f"python{'.'.join(system_version)}":
        pytest.skip(
            f"!!! DEPLOY TEST NOT RUN: .venv-edge ({edge_site.parent.name}) must be built with "
            f"{SYSTEM_PYTHON}'s version (Python {'.'.join(system_version)}): its packages play the Pi's apt "
            "dist-packages (make clean; make test PYTHON=/usr/bin/python3) !!!"
        )


def _dist_packages(folder: Path) -> Path:
    """A folder that plays apt's dist-packages: links to .venv-edge's packages."""
    folder.mkdir()
    for entry in _site_packages(EDGE_VENV).iterdir():
        if entry.suffix == ".pth" or entry.name == "__pycache__" or entry.name.startswith(NOT_FROM_APT):
            continue
        (folder / entry.name).symlink_to(entry)
    return folder


def _site_packages(venv: Path) -> Path:
    found = sorted(venv.glob("lib/python3*/site-packages"))
    assert found, f"{venv} has no site-packages"
    return found[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tree(root: Path) -> dict[str, tuple]:
    """Every path under root with what a rewrite would change: type, mode, size, mtime, link target."""
    entries = {}
    for path in sorted(root.rglob("*")):
        if "__pycache__" in path.parts:
            continue
        info = path.lstat()
        target = os.readlink(path) if path.is_symlink() else None
        entries[str(path.relative_to(root))] = (
            stat.S_IFMT(info.st_mode),
            stat.S_IMODE(info.st_mode),
            info.st_size,
            info.st_mtime_ns,
            target,
        )
    return entries


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@dataclass
class FakePi:
    base: Path
    port: int
    key: Path
    known_hosts: Path
    state: Path
    root: Path  # install.sh --prefix
    stubs: Path
    dist_packages: Path
    calls_seen: int = field(default=0)

    @property
    def ssh_options(self) -> list[str]:
        return [
            "--port",
            str(self.port),
            "--identity",
            str(self.key),
            "--ssh-option",
            f"UserKnownHostsFile={self.known_hosts}",
            "--ssh-option",
            "StrictHostKeyChecking=yes",
            "--ssh-option",
            "BatchMode=yes",
            "--staging",
            str(self.base / "staging"),
        ]

    def deploy(self, *args: str, script: Path = DEPLOY, install_args: tuple[str, ...] = ()):
        cmd = [
            str(script),
            "PI=root@127.0.0.1",
            *self.ssh_options,
            *args,
            "--",
            "--prefix",
            str(self.root),
            *install_args,
        ]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)

    def new_calls(self) -> list[str]:
        """The stub calls since the last time this was asked."""
        lines = (self.state / "calls.log").read_text().splitlines() if (self.state / "calls.log").exists() else []
        new, self.calls_seen = lines[self.calls_seen :], len(lines)
        return new

    def env(self) -> dict[str, str]:
        """The environment of a session on the fake Pi, for commands run without ssh."""
        return {
            **os.environ,
            "PATH": f"{self.stubs}:{os.environ['PATH']}",
            "PYTHONPATH": str(self.dist_packages),
            "PIP_NO_INDEX": "1",
            "FAKE_PI_STATE": str(self.state),
        }

    def path(self, absolute: str) -> Path:
        return self.root / absolute.lstrip("/")


@pytest.fixture(scope="module")
def fake_pi(tmp_path_factory):
    _ensure_prerequisites()
    base = tmp_path_factory.mktemp("fake-pi")
    for name in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / name)], check=True)
    shutil.copy(base / "user_key.pub", base / "authorized_keys")

    stubs = base / "stubs"
    stubs.mkdir()
    (stubs / "fake-pi-command").write_text(STUB)
    (stubs / "fake-pi-command").chmod(0o755)
    for name in STUBBED:
        (stubs / name).symlink_to("fake-pi-command")
    state = base / "state"
    state.mkdir()
    (state / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (state / "group").write_text("root:x:0:\nvideo:x:44:\n")  # no render group: install.sh must add it
    (state / "systemd-version").write_text("252\n")

    dist_packages = _dist_packages(base / "dist-packages")

    port = _free_port()
    env_line = (
        f"PATH={stubs}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin PYTHONPATH={dist_packages} "
        f"PIP_NO_INDEX=1 FAKE_PI_STATE={state}"
    )
    (base / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {base / 'host_key'}\nPidFile {base / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nSetEnv {env_line}\n"
    )
    host_key = (base / "host_key.pub").read_text().split()
    (base / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_key[0]} {host_key[1]}\n")
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    log = open(base / "sshd.log", "w")
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(base / "sshd_config")], stderr=log)
    pi = FakePi(base, port, base / "user_key", base / "known_hosts", state, base / "root", stubs, dist_packages)
    try:
        probe = [
            "ssh",
            "-p",
            str(port),
            "-i",
            str(pi.key),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            f"UserKnownHostsFile={pi.known_hosts}",
            "-o",
            "StrictHostKeyChecking=yes",
            "root@127.0.0.1",
            "command -v systemctl",
        ]
        for _ in range(50):
            result = subprocess.run(probe, capture_output=True, text=True, stdin=subprocess.DEVNULL)
            if result.returncode == 0 or sshd.poll() is not None:
                break
            time.sleep(0.2)
        assert result.returncode == 0, f"stand-in Pi unreachable: {result.stderr}\n{(base / 'sshd.log').read_text()}"
        assert result.stdout.strip() == str(stubs / "systemctl")  # sessions see the stubs first
        yield pi
    finally:
        sshd.terminate()
        sshd.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def first_deploy(fake_pi):
    result = fake_pi.deploy()
    assert result.returncode == 0, result.stderr
    return result, fake_pi.new_calls()


def test_first_deploy_installs_venv_model_config_unit_and_starts(fake_pi, first_deploy):
    result, calls = first_deploy
    root = fake_pi.root
    assert (root / "etc/systemd/system/fer-edge.service").read_text() == (REPO / "systemd/fer-edge.service").read_text()
    assert not (root / "etc/systemd/system/fer-edge.service.d").exists()  # systemd 252: no back-off drop-in
    assert (root / "etc/fer-edge/config.yaml").read_text() == (REPO / "deploy/config.yaml").read_text()
    cfg = yaml.safe_load((root / "etc/fer-edge/config.yaml").read_text())
    model = fake_pi.path(cfg["model"]["path"])
    sidecar = json.loads(model.with_suffix(".json").read_text())
    assert _sha256(model) == sidecar["sha256"] == _sha256(MODEL)
    assert (root / "var/lib/fer-edge/models/current").readlink() == Path(sidecar["sha256"][:12])
    assert (root / "var/lib/fer-edge/recordings").is_dir()
    venv_cfg = (root / "opt/fer-edge/venv/pyvenv.cfg").read_text()
    assert "include-system-site-packages = true" in venv_cfg
    assert (root / "opt/fer-edge/constraints.txt").read_text().startswith("numpy==")
    pip_requirements = (root / "opt/fer-edge/requirements-pi.txt").read_text()
    # the lock is for 64-bit ARM: elsewhere requirements-edge.txt is resolved, with the headless OpenCV wheel
    assert "ai-edge-litert" in pip_requirements and "opencv-python-headless" in pip_requirements
    assert "--hash" not in pip_requirements and "no lock for x86_64" in result.stderr

    apt = [c for c in calls if c.startswith("apt-get install")]
    assert apt and "python3-picamera2 python3-numpy opencv-data python3-venv" in apt[0]
    assert "python3-opencv" not in apt[0].split()  # 162 packages for OpenCV 4.6: the wheel instead
    assert "groupadd --system render" in calls
    useradd = [c for c in calls if c.startswith("useradd")]
    assert len(useradd) == 1 and "--system" in useradd[0] and "--groups video" in useradd[0]
    assert "chown -h fer-edge:fer-edge " + str(root / "var/lib/fer-edge/recordings") in calls
    systemctl = [c for c in calls if c.startswith("systemctl") and "--version" not in c]
    assert systemctl[:4] == [
        "systemctl daemon-reload",
        "systemctl enable --quiet fer-edge",
        "systemctl is-active --quiet fer-edge",
        "systemctl start fer-edge",
    ]
    assert "config ok: /etc/fer-edge/config.yaml" in result.stderr  # check-config ran before the start
    assert result.stderr.index("config ok") < result.stderr.index("starting fer-edge")
    assert "systemctl status fer-edge fer-edge@* --no-pager --lines 0" in calls  # with the camera instances
    assert "journalctl -u fer-edge -u fer-edge@* -n 20 --no-pager" in calls
    assert "-- stub journal" in result.stdout


def test_the_config_is_readable_by_root_and_the_service_only(fake_pi, first_deploy):
    """It may hold a camera URL with its password."""
    _, calls = first_deploy
    config = fake_pi.root / "etc/fer-edge/config.yaml"
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    assert f"chown root:fer-edge {config}" in calls


def test_installed_fer_edge_runs_the_demo_clip_without_tensorflow(fake_pi, first_deploy, tmp_path):
    venv = fake_pi.root / "opt/fer-edge/venv"
    env = fake_pi.env()
    probe = subprocess.run(
        [
            str(venv / "bin/python"),
            "-c",
            "import fer_edge, importlib.util as u; print(fer_edge.__file__); print(u.find_spec('tensorflow'))",
        ],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert probe[0].startswith(str(venv))  # the installed copy, not the checkout
    assert probe[1] == "None"

    cfg = yaml.safe_load((fake_pi.root / "etc/fer-edge/config.yaml").read_text())
    cfg["model"]["path"] = str(fake_pi.path(cfg["model"]["path"]))
    cfg["recording"]["output_dir"] = str(fake_pi.path(cfg["recording"]["output_dir"]))
    run_config = tmp_path / "config.yaml"
    run_config.write_text(yaml.safe_dump(cfg))
    result = subprocess.run(
        [str(venv / "bin/fer-edge"), "run", "--config", str(run_config), "--source", str(CLIP), "--max-frames", "60"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    recordings = Path(cfg["recording"]["output_dir"])
    videos = sorted(recordings.rglob("*.mp4"))
    assert videos, f"no recording in {recordings}: {result.stderr}"
    import av

    with av.open(str(videos[0])) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames > 0


@pytest.fixture(scope="module")
def second_deploy(fake_pi, first_deploy):
    before = _tree(fake_pi.root)
    result = fake_pi.deploy("--no-restart")
    assert result.returncode == 0, result.stderr
    return result, before, _tree(fake_pi.root), fake_pi.new_calls()


def test_second_deploy_changes_nothing(second_deploy):
    result, before, after, calls = second_deploy
    changed = {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}
    changed -= {p for p in changed if p.startswith("var/lib/fer-edge/recordings")}  # the demo run's output
    assert changed == set()
    assert "python packages unchanged" in result.stderr
    assert "nothing changed; fer-edge keeps running" in result.stderr
    assert not [c for c in calls if c.split()[0] in ("useradd", "usermod", "groupadd")]
    assert not [c for c in calls if c.startswith(("systemctl start", "systemctl restart"))]


@pytest.fixture(scope="module")
def edited_config(fake_pi, second_deploy):
    config = fake_pi.root / "etc/fer-edge/config.yaml"
    edited = config.read_text().replace("status_interval_s: 60.0", "status_interval_s: 30.0")
    assert edited != config.read_text()
    config.write_text(edited)
    result = fake_pi.deploy()
    assert result.returncode == 0, result.stderr
    return result, edited, fake_pi.new_calls()


def test_an_edited_config_is_never_overwritten(fake_pi, edited_config):
    result, edited, calls = edited_config
    config = fake_pi.root / "etc/fer-edge/config.yaml"
    assert config.read_text() == edited
    assert (config.parent / "config.yaml.new").read_text() == (REPO / "deploy/config.yaml").read_text()
    assert "kept your /etc/fer-edge/config.yaml" in result.stderr and "config.yaml.new" in result.stderr
    assert "systemctl restart fer-edge" in calls  # deploy.sh restarts (--restart) even when only that changed


def test_a_broken_config_stops_the_install_before_any_restart(fake_pi, edited_config):
    config = fake_pi.root / "etc/fer-edge/config.yaml"
    good = config.read_text()
    config.write_text(good.replace("recording:\n", "recording:\n  segment_secnds: 10\n", 1))
    try:
        result = fake_pi.deploy()
    finally:
        config.write_text(good)
    calls = fake_pi.new_calls()
    assert result.returncode != 0
    assert "recording.segment_secnds: unknown key" in result.stderr  # fer-edge check-config's own line
    assert "does not pass fer-edge check-config: service not (re)started" in result.stderr
    assert not [c for c in calls if c.startswith(("systemctl daemon-reload", "systemctl start", "systemctl restart"))]


def _variant_model(tmp_path: Path, tag: bytes) -> Path:
    """The shipped model with bytes appended (a different file, still a valid flatbuffer) and its sidecar."""
    model = tmp_path / "fer_variant.tflite"
    model.write_bytes(MODEL.read_bytes() + tag)
    sidecar = json.loads(MODEL.with_suffix(".json").read_text())
    sidecar["sha256"] = _sha256(model)
    model.with_suffix(".json").write_text(json.dumps(sidecar))
    return model


def test_a_full_install_whose_model_fails_the_check_keeps_the_running_model(fake_pi, edited_config, tmp_path):
    """The service's next start (a crash, the watchdog, a reboot) must not take a model check-config refused."""
    models = fake_pi.root / "var/lib/fer-edge/models"
    current = (models / "current").readlink()
    refused = _variant_model(tmp_path, b"\3" * 16)
    sidecar = json.loads(refused.with_suffix(".json").read_text())
    refused.with_suffix(".json").write_text(json.dumps({**sidecar, "face_margin": 10}))
    config = fake_pi.path("/etc/fer-edge/config.yaml")
    good = config.read_text()
    config.write_text(good.replace("/var/lib/fer-edge/models/current/", f"{models}/current/"))  # under the prefix
    try:
        result = fake_pi.deploy("--model", str(refused))
    finally:
        config.write_text(good)
    calls = fake_pi.new_calls()
    assert result.returncode != 0, result.stderr
    assert "face_margin" in result.stderr and "does not pass fer-edge check-config" in result.stderr
    assert f"rolled back to model {current}" in result.stderr
    assert (models / "current").readlink() == current
    assert not [c for c in calls if c.startswith(("systemctl start", "systemctl restart"))]


def test_a_full_install_whose_service_fails_to_start_restores_the_previous_model(fake_pi, edited_config, tmp_path):
    models = fake_pi.root / "var/lib/fer-edge/models"
    current = (models / "current").readlink()
    (fake_pi.state / "fail-next-start").touch()
    result = fake_pi.deploy("--model", str(_variant_model(tmp_path, b"\4" * 16)))
    calls = fake_pi.new_calls()
    assert result.returncode != 0
    assert "did not start (journalctl -u fer-edge): previous model restored" in result.stderr
    assert (models / "current").readlink() == current
    assert [c for c in calls if c.startswith("systemctl restart")] == ["systemctl restart fer-edge"] * 2
    assert "removed old model" not in result.stderr


@pytest.fixture(scope="module")
def swapped_model(fake_pi, edited_config, tmp_path_factory):
    models = fake_pi.root / "var/lib/fer-edge/models"
    first = (models / "current").readlink()
    variant = _variant_model(tmp_path_factory.mktemp("model"), b"\0" * 16)
    result = fake_pi.deploy("--model", str(variant), script=DEPLOY_MODEL)
    assert result.returncode == 0, result.stderr
    return result, first, variant, fake_pi.new_calls()


def test_deploy_model_swaps_the_pair_atomically_and_restarts(fake_pi, swapped_model):
    result, first, variant, calls = swapped_model
    models = fake_pi.root / "var/lib/fer-edge/models"
    current = models / "current"
    assert current.readlink() == Path(_sha256(variant)[:12]) != first
    assert (current / "model.tflite").read_bytes() == variant.read_bytes()
    assert json.loads((current / "model.json").read_text())["sha256"] == _sha256(variant)
    assert (models / first / "model.tflite").read_bytes() == MODEL.read_bytes()  # the previous one is kept
    assert not list(models.glob(".incoming*")) and not (models / ".current.tmp").exists()
    assert "systemctl restart fer-edge" in calls
    assert not [c for c in calls if c.startswith(("apt-get", "useradd"))]  # only the model moved


def test_deploy_model_refuses_a_model_that_does_not_match_its_sidecar(fake_pi, swapped_model, tmp_path):
    current = (fake_pi.root / "var/lib/fer-edge/models/current").readlink()
    broken = _variant_model(tmp_path, b"\1" * 16)
    broken.write_bytes(broken.read_bytes() + b"truncated elsewhere")
    result = fake_pi.deploy("--model", str(broken), script=DEPLOY_MODEL)
    assert result.returncode != 0
    assert "does not match the sha256" in result.stderr
    assert (fake_pi.root / "var/lib/fer-edge/models/current").readlink() == current
    fake_pi.new_calls()


def test_deploy_model_restores_the_previous_model_when_the_service_fails(fake_pi, swapped_model, tmp_path):
    models = fake_pi.root / "var/lib/fer-edge/models"
    current = (models / "current").readlink()
    (fake_pi.state / "fail-next-start").touch()
    result = fake_pi.deploy("--model", str(_variant_model(tmp_path, b"\2" * 16)), script=DEPLOY_MODEL)
    assert result.returncode != 0
    assert "previous model restored" in result.stderr
    assert (models / "current").readlink() == current
    calls = fake_pi.new_calls()
    assert [c for c in calls if c.startswith("systemctl restart")] == ["systemctl restart fer-edge"] * 2


@dataclass
class ModelOnlyPi:
    """install.sh --model-only under --prefix without ssh or a venv: stubbed system commands, the config
    template, and a stub `fer-edge` whose check-config passes (only the model swap is under test)."""

    root: Path
    state: Path
    env: dict[str, str]

    @property
    def models(self) -> Path:
        return self.root / "var/lib/fer-edge/models"

    def install(self, model: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["bash", str(INSTALL), "--prefix", str(self.root), "--model-only", "--model", str(model), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    def install_aged(self, models: list[Path]) -> list[str]:
        """Install each model in turn, then date their folders a minute apart, the first the oldest."""
        versions = []
        for model in models:
            result = self.install(model)
            assert result.returncode == 0, result.stderr
            versions.append(_sha256(model)[:12])
        now = time.time()
        for age, version in enumerate(reversed(versions), start=1):
            os.utime(self.models / version, (now - 60 * age, now - 60 * age))
        return versions


@pytest.fixture
def model_only_pi(tmp_path):
    env, state = _stubbed_system(tmp_path / "system")
    root = tmp_path / "root"
    fer_edge = root / "opt/fer-edge/venv/bin/fer-edge"
    fer_edge.parent.mkdir(parents=True)
    fer_edge.write_text("#!/bin/sh\nexit 0\n")
    fer_edge.chmod(0o755)
    (root / "etc/fer-edge").mkdir(parents=True)
    shutil.copy(REPO / "deploy/config.yaml", root / "etc/fer-edge/config.yaml")
    return ModelOnlyPi(root, state, env)


def _small_models(folder: Path, names: str) -> list[Path]:
    """Stand-in models with their sidecars: install.sh checks a model only against its sidecar's sha256."""
    models = []
    for name in names:
        model = folder / f"model-{name}.tflite"
        model.write_bytes(f"stand-in model {name}".encode())
        model.with_suffix(".json").write_text(json.dumps({"sha256": _sha256(model)}))
        models.append(model)
    return models


@pytest.mark.parametrize("back_to_a", ["by hand", "with deploy-model"])
def test_a_failed_model_swap_rolls_back_to_a_model_that_is_still_there(model_only_pi, tmp_path, back_to_a):
    """A, B, C installed, A made active again, D fails to start: the rollback target A was not pruned."""
    pi = model_only_pi
    a, b, c, d = _small_models(tmp_path, "abcd")
    version_a = pi.install_aged([a, b, c])[0]
    if back_to_a == "by hand":  # docs/DEPLOY.md's "roll back by hand", under the prefix
        subprocess.run(
            [
                "bash",
                "-c",
                f"ln -sfn {version_a} {pi.models}/.current.tmp && mv -T {pi.models}/.current.tmp {pi.models}/current",
            ],
            check=True,
        )
    else:
        assert pi.install(a).returncode == 0
    assert (pi.models / "current").readlink() == Path(version_a)
    (pi.state / "fail-next-start").touch()
    result = pi.install(d)
    assert result.returncode != 0
    assert "previous model restored" in result.stderr
    assert (pi.models / "current").readlink() == Path(version_a)
    assert (pi.models / "current/model.tflite").read_bytes() == a.read_bytes()  # not a dangling link
    assert "removed old model" not in result.stderr  # nothing is pruned before the new model runs


def test_a_model_swap_prunes_after_the_restart_and_keeps_the_previous_model(model_only_pi, tmp_path):
    pi = model_only_pi
    a, b, c, d = _small_models(tmp_path, "abcd")
    version_a, version_b, version_c = pi.install_aged([a, b, c])
    (pi.models / "current").unlink()
    (pi.models / "current").symlink_to(version_a)  # A active again: D's rollback target, however old
    result = pi.install(d)
    assert result.returncode == 0, result.stderr
    version_d = _sha256(d)[:12]
    kept = {p.name for p in pi.models.iterdir() if p.is_dir() and not p.is_symlink()}
    assert kept == {version_d, version_a, version_c}  # three in all: the new, the previous, the newest other
    assert (pi.models / "current").readlink() == Path(version_d)
    assert f"removed old model {version_b}" in result.stderr
    assert result.stderr.index("restarting fer-edge with the new model") < result.stderr.index("removed old model")


def test_pruning_keeps_the_model_made_active_most_recently_not_the_one_copied_last(model_only_pi, tmp_path):
    """A, B, C installed, A made active again, then D, then E: A ran after C did, so A is the third kept."""
    pi = model_only_pi
    a, b, c, d, e = _small_models(tmp_path, "abcde")
    version_a, version_b, version_c = pi.install_aged([a, b, c])
    assert pi.install(a).returncode == 0
    assert pi.install(d).returncode == 0
    result = pi.install(e)
    assert result.returncode == 0, result.stderr
    kept = {p.name for p in pi.models.iterdir() if p.is_dir() and not p.is_symlink()}
    assert kept == {_sha256(e)[:12], _sha256(d)[:12], version_a}
    assert f"removed old model {version_c}" in result.stderr


def test_a_new_model_restarts_the_other_running_instances_but_not_those_left_to_the_caller(model_only_pi, tmp_path):
    """`current` is shared: an instance left running keeps the old model until its next start takes the new
    one. --leave NAME (deploy/ansible, which installs NAME next itself) keeps NAME out of it."""
    pi = model_only_pi
    a, b, c = _small_models(tmp_path, "abc")
    etc = pi.root / "etc/fer-edge"
    for name in ("door", "till", "yard"):
        shutil.copy(etc / "config.yaml", etc / f"{name}.yaml")
        (pi.state / f"active.fer-edge@{name}").write_text("active\n" if name != "yard" else "inactive\n")
    assert pi.install(a).returncode == 0
    before = len(_restarts(pi.state))
    result = pi.install(b)
    assert result.returncode == 0, result.stderr
    assert _restarts(pi.state)[before:] == ["fer-edge", "fer-edge@door", "fer-edge@till"]
    for name in ("door", "till"):
        assert f"config ok: /etc/fer-edge/{name}.yaml" in result.stderr
    before = len(_restarts(pi.state))
    command = ["bash", str(INSTALL), "--prefix", str(pi.root), "--model-only", "--model", str(c), "--leave", "till"]
    left = subprocess.run(command, env=pi.env, capture_output=True, text=True, timeout=60)
    assert left.returncode == 0, left.stderr
    assert _restarts(pi.state)[before:] == ["fer-edge", "fer-edge@door"]
    assert "restarting the other running instances on the new release too: fer-edge@door" in left.stderr
    before = len(_restarts(pi.state))
    assert pi.install(c).returncode == 0  # nothing changed: the others keep running
    assert _restarts(pi.state)[before:] == []


def test_a_new_model_leaves_a_disabled_plain_service_stopped_where_instances_run(model_only_pi, tmp_path):
    """A Pi whose cameras run as instances, the plain service disabled (as the docs say): deploy-model swaps the
    model and restarts the instances; starting the plain service too would take a camera from one of them."""
    pi = model_only_pi
    a, b, c = _small_models(tmp_path, "abc")
    etc = pi.root / "etc/fer-edge"
    shutil.copy(etc / "config.yaml", etc / "door.yaml")
    (pi.state / "active.fer-edge@door").write_text("active\n")
    assert pi.install(a).returncode == 0
    (pi.state / "active.fer-edge").write_text("inactive\n")
    (pi.state / "enabled.fer-edge").write_text("disabled\n")
    before = len(_restarts(pi.state))
    result = pi.install(b)
    assert result.returncode == 0, result.stderr
    assert _restarts(pi.state)[before:] == ["fer-edge@door"]
    assert "fer-edge is neither running nor enabled: left stopped" in result.stderr
    assert (pi.models / "current").resolve().name == _sha256(b)[:12]
    (pi.state / "fail-next-start.fer-edge@door").touch()  # the instance fails on the next model: rolled back
    before = len(_restarts(pi.state))
    failed = pi.install(c)
    assert failed.returncode != 0 and "fer-edge@door did not start" in failed.stderr
    assert set(_restarts(pi.state)[before:]) == {"fer-edge@door"}  # and the plain service is still not started
    assert (pi.models / "current").resolve().name == _sha256(b)[:12]


def _unfinished_copy(models: Path) -> Path:
    """What a power cut or a SIGKILL during a model copy leaves: a half-written .incoming.* folder."""
    incoming = models / ".incoming.Xq3v7a"
    incoming.mkdir(parents=True)
    (incoming / "model.tflite").write_bytes(b"\0" * 4096)
    return incoming


def test_the_next_model_install_removes_a_copy_an_earlier_one_did_not_finish(model_only_pi, tmp_path):
    pi = model_only_pi
    a, b = _small_models(tmp_path, "ab")
    assert pi.install(a).returncode == 0
    incoming = _unfinished_copy(pi.models)
    result = pi.install(b)
    assert result.returncode == 0, result.stderr
    assert not incoming.exists()
    assert f"removed /var/lib/fer-edge/models/{incoming.name}: a model copy an earlier install did not finish" in (
        result.stderr
    )
    assert (pi.models / "current/model.tflite").read_bytes() == b.read_bytes()


def test_an_install_beside_another_stops_and_leaves_the_copy_that_one_is_writing(model_only_pi, tmp_path):
    """Another install holds the lock while it copies its model: this one says so and touches nothing."""
    import fcntl

    pi = model_only_pi
    (a,) = _small_models(tmp_path, "a")
    incoming = _unfinished_copy(pi.models)
    with open(pi.root / "opt/fer-edge/.install.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = pi.install(a)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors == [
        "fer-edge install: error: another install is running on this Pi (it holds /opt/fer-edge/.install.lock): "
        "install again once it is done"
    ]
    assert incoming.exists() and not (pi.models / "current").exists()
    assert pi.install(a).returncode == 0 and not incoming.exists()  # once it is done


def test_a_model_deployed_again_with_a_changed_sidecar_takes_the_new_sidecar(model_only_pi, tmp_path):
    """The same .tflite with a corrected sidecar (labels, face margin, calibration) is a new model to the service."""
    pi = model_only_pi
    (model,) = _small_models(tmp_path, "a")
    assert pi.install(model).returncode == 0
    first = (pi.models / "current").readlink()
    sidecar = json.loads(model.with_suffix(".json").read_text())
    model.with_suffix(".json").write_text(json.dumps({**sidecar, "face_margin": 1.2}))
    result = pi.install(model)
    assert result.returncode == 0, result.stderr
    assert "nothing to do" not in result.stderr and "restarting fer-edge with the new model" in result.stderr
    assert (pi.models / "current").readlink() != first
    assert json.loads((pi.models / "current/model.json").read_text())["face_margin"] == 1.2
    assert (pi.models / first / "model.json").read_text() == json.dumps(sidecar)  # the rollback target, as it was
    again = pi.install(model)
    assert again.returncode == 0 and "model already active; nothing to do" in again.stderr


def test_a_new_model_with_a_new_credential_reloads_systemd_before_the_restart(model_only_pi, tmp_path):
    """The model swap alone changes no unit; a new credential adds drop-ins that systemd reads only on a
    reload, so without one the restarted service would start without its secret."""
    pi = model_only_pi
    first, second = _small_models(tmp_path, "ab")
    assert pi.install(first).returncode == 0
    (pi.state / "calls.log").unlink()
    secret = tmp_path / "mqtt-password"
    secret.write_text("a-broker-password\n")
    result = pi.install(second, "--credential", f"mqtt-password={secret}")
    assert result.returncode == 0, result.stderr
    calls = [c for c in (pi.state / "calls.log").read_text().splitlines() if c.startswith("systemctl")]
    assert "systemctl daemon-reload" in calls and "systemctl restart fer-edge" in calls, calls
    assert calls.index("systemctl daemon-reload") < calls.index("systemctl restart fer-edge")
    dropin = pi.root / "etc/systemd/system/fer-edge.service.d/60-credential-mqtt-password.conf"
    assert dropin.read_text() == "[Service]\nLoadCredential=mqtt-password:/etc/fer-edge/credentials/mqtt-password\n"


def test_a_new_secret_restarts_every_running_instance_and_an_unchanged_one_none(model_only_pi, tmp_path):
    """The drop-ins load a credential into the plain service and every camera instance: an instance left
    running would keep the old token or password until its next start."""
    pi = model_only_pi
    (model,) = _small_models(tmp_path, "a")
    etc = pi.root / "etc/fer-edge"
    shutil.copy(etc / "config.yaml", etc / "door.yaml")
    (pi.state / "active.fer-edge@door").write_text("active\n")
    assert pi.install(model).returncode == 0
    secret = tmp_path / "web-token"
    for token, restarted in (("first-token-of-32-characters-ok", ["fer-edge", "fer-edge@door"]), (None, [])):
        if token:
            secret.write_text(token + "\n")
        before = len(_restarts(pi.state))
        result = pi.install(model, "--credential", f"web-token={secret}")
        assert result.returncode == 0, result.stderr
        assert _restarts(pi.state)[before:] == restarted, result.stderr
        if restarted:
            assert "config ok: /etc/fer-edge/door.yaml" in result.stderr


def test_check_config_sees_the_credentials_the_service_will_see(model_only_pi, tmp_path):
    """A live view on the network with its token in a systemd credential (deploy.sh --web-token-file): the
    service runs, and every later install must not stop at a check-config that was not shown the token."""
    pi = model_only_pi
    fer_edge = pi.root / "opt/fer-edge/venv/bin/fer-edge"
    fer_edge.write_text(f'#!/bin/sh\nexec "{EDGE_VENV}/bin/fer-edge" "$@"\n')  # the real check-config
    config = pi.root / "etc/fer-edge/config.yaml"
    subprocess.run(
        [str(EDGE_VENV / "bin/python"), "-c", _SET_LISTEN, str(config)], check=True, capture_output=True, text=True
    )
    (model,) = _small_models(tmp_path, "a")
    refused = pi.install(model)
    assert refused.returncode != 0 and "web.listen: 0.0.0.0 is reachable from other machines" in refused.stderr
    credentials = pi.root / "etc/fer-edge/credentials"
    credentials.mkdir(mode=0o700)
    token = credentials / "web-token"
    token.write_text("a-real-token-of-32-characters-ok\n")
    token.chmod(0o600)
    result = pi.install(model)
    assert result.returncode == 0, result.stderr
    assert "config ok: /etc/fer-edge/config.yaml" in result.stderr


# web on, listening on every address, no token in the config: the token comes as a credential
_SET_LISTEN = """
import sys, yaml
path = sys.argv[1]
config = yaml.safe_load(open(path))
config["web"].update(enabled=True, listen="0.0.0.0:18080")
open(path, "w").write(yaml.safe_dump(config))
"""


@pytest.fixture(scope="module")
def uninstalled(fake_pi, swapped_model):
    recording = fake_pi.root / "var/lib/fer-edge/recordings/2026-01-01/segment.mp4"
    recording.parent.mkdir(parents=True, exist_ok=True)
    recording.write_bytes(b"a finished recording")
    result = fake_pi.deploy(install_args=("--uninstall",))
    assert result.returncode == 0, result.stderr
    return result, recording, fake_pi.new_calls()


def test_uninstall_removes_what_install_added_and_keeps_recordings(fake_pi, uninstalled):
    result, recording, calls = uninstalled
    root = fake_pi.root
    assert recording.read_bytes() == b"a finished recording"
    for gone in (
        "opt/fer-edge",
        "etc/systemd/system/fer-edge.service",
        "var/lib/fer-edge/models",
        "etc/fer-edge/config.yaml.new",
    ):
        assert not (root / gone).exists(), gone
    assert (root / "etc/fer-edge/config.yaml").exists()  # edited by the operator: kept
    assert "kept your edited /etc/fer-edge/config.yaml" in result.stderr
    assert calls[:2] == ["systemctl disable --now --quiet fer-edge", "systemctl daemon-reload"]


def test_uninstalling_one_camera_instance_leaves_the_others_running(tmp_path):
    env, state = _stubbed_system(tmp_path / "system")
    root = tmp_path / "root"
    units = root / "etc/systemd/system"
    units.mkdir(parents=True)
    for unit in ("fer-edge.service", "fer-edge@.service", "fer-edge.slice"):
        shutil.copy(REPO / "systemd" / unit, units / unit)
    (root / "etc/fer-edge").mkdir()
    for name in ("config", "door", "till"):
        shutil.copy(REPO / "deploy/config.yaml", root / f"etc/fer-edge/{name}.yaml")
    venv = root / "opt/fer-edge/venv"
    venv.mkdir(parents=True)
    result = subprocess.run(
        ["bash", str(INSTALL), "--prefix", str(root), "--uninstall", "--instance", "till"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    calls = (state / "calls.log").read_text().splitlines()
    assert [c for c in calls if c.startswith("systemctl")] == ["systemctl disable --now --quiet fer-edge@till"]
    assert venv.is_dir() and sorted(p.name for p in units.iterdir()) == [
        "fer-edge.service",
        "fer-edge.slice",
        "fer-edge@.service",
    ]
    assert (root / "etc/fer-edge/till.yaml").exists()  # with its recordings, kept
    assert "stopped and disabled fer-edge@till" in result.stderr


def test_uninstall_says_where_the_secrets_it_keeps_are(tmp_path):
    """The web token and the MQTT password outlive an uninstall: the output says so, and how to remove them."""
    env, _ = _stubbed_system(tmp_path / "system")
    root = tmp_path / "root"
    credentials = root / "etc/fer-edge/credentials"
    credentials.mkdir(parents=True)
    (credentials / "web-token").write_text("a-real-token-of-32-characters-ok\n")
    dropin = root / "etc/systemd/system/fer-edge.service.d/60-credential-web-token.conf"
    dropin.parent.mkdir(parents=True)
    dropin.write_text("[Service]\nLoadCredential=web-token:/etc/fer-edge/credentials/web-token\n")
    shutil.copy(REPO / "systemd/fer-edge.service", root / "etc/systemd/system/fer-edge.service")
    result = subprocess.run(
        ["bash", str(INSTALL), "--prefix", str(root), "--uninstall"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert (credentials / "web-token").exists() and dropin.exists()  # a reinstall loads them again
    assert "kept the secrets in /etc/fer-edge/credentials" in result.stderr
    remove = [line for line in result.stderr.splitlines() if "to remove everything" in line]
    assert remove and "/etc/fer-edge " in remove[0] and "/etc/systemd/system/fer-edge.service.d " in remove[0]


def test_device_config_template_sets_every_key():
    """The template an operator edits on the Pi shows every knob (configs/edge-default.yaml has them all)."""
    template = yaml.safe_load((REPO / "deploy/config.yaml").read_text())
    defaults = yaml.safe_load((REPO / "configs/edge-default.yaml").read_text())
    assert {section: set(keys) for section, keys in template.items()} == {
        section: set(keys) for section, keys in defaults.items()
    }
    assert template["model"]["path"] == "/var/lib/fer-edge/models/current/model.tflite"  # install.sh's layout
    assert template["recording"]["output_dir"].startswith("/var/lib/fer-edge/")  # the unit's StateDirectory


def test_install_with_prefix_refuses_the_real_system_commands(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FAKE_PI_STATE"}
    result = subprocess.run(
        ["bash", str(INSTALL), "--prefix", str(tmp_path / "root"), "--no-apt"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "would run the real" in result.stderr and "put a stub" in result.stderr
    assert not (tmp_path / "root").exists()  # refused before writing anything


def _install_under(root: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """install.sh with ``args`` under ``--prefix root``, with the stubbed system commands of ``env``."""
    return subprocess.run(
        ["bash", str(INSTALL), "--prefix", str(root), *args], env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--src", "/nonexistent/release"], "--src: /nonexistent/release is not a folder"),
        (["--config", "/nonexistent/config.yaml"], "--config: /nonexistent/config.yaml is not a file"),
        (["--instance", "cam", "--web-port", "99999"], "--web-port 99999: a port number 1-65535"),
        (["--model"], "--model needs a file"),
        (["--no-apt", "--credential"], "--credential needs NAME=FILE"),
    ],
    ids=["src-missing", "config-missing", "web-port-too-high", "model-without-value", "credential-without-value"],
)
def test_a_bad_install_option_is_one_line_before_anything_is_written(args, expected, tmp_path):
    env, state = _stubbed_system(tmp_path / "system")
    result = _install_under(tmp_path / "root", env, *args)
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"fer-edge install: error: {expected}"], result.stderr
    assert not (tmp_path / "root").exists() and not (state / "calls.log").exists()


@pytest.mark.parametrize("missing", ["model", "sidecar"])
def test_a_full_install_with_a_missing_model_stops_before_the_venv_is_built(missing, tmp_path):
    """Found only after apt and pip, a mistyped --model cost minutes on a Pi and left a venv half made."""
    env, state = _stubbed_system(tmp_path / "system")
    model = tmp_path / "fer_int8.tflite"
    if missing == "sidecar":
        shutil.copy(REPO / "models" / "fer_int8.tflite", model)
    said = (
        f"model not found: {model}" if missing == "model" else f"model sidecar not found: {model.with_suffix('.json')}"
    )
    result = _install_under(tmp_path / "root", env, "--no-apt", "--model", str(model))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"fer-edge install: error: {said}"], result.stderr
    assert not (tmp_path / "root" / "opt" / "fer-edge" / "venv").exists() and not (state / "calls.log").exists()


def test_backoff_drop_in_only_on_systemd_254_or_newer(fake_pi, uninstalled):
    (fake_pi.state / "systemd-version").write_text("257\n")
    try:
        result = fake_pi.deploy()
        assert result.returncode == 0, result.stderr
        dropin = fake_pi.root / "etc/systemd/system/fer-edge.service.d/50-backoff.conf"
        template_dropin = fake_pi.root / "etc/systemd/system/fer-edge@.service.d/50-backoff.conf"
        assert dropin.read_text() == (REPO / "systemd/fer-edge-backoff.conf").read_text()
        assert template_dropin.read_text() == dropin.read_text()  # the camera instances back off alike
        (fake_pi.state / "systemd-version").write_text("252\n")
        result = fake_pi.deploy()
        assert result.returncode == 0, result.stderr
        assert not dropin.exists() and not template_dropin.exists()  # e.g. a card moved back to an older OS
    finally:
        (fake_pi.state / "systemd-version").write_text("252\n")
        fake_pi.new_calls()


def test_deploy_installs_secrets_as_credentials_of_the_service_and_its_instances(fake_pi, uninstalled, tmp_path):
    """--web-token-file and --mqtt-password-file become root-only files that systemd loads into the plain
    service and every camera instance; a new one replaces the old, and an install that fails puts it back."""
    secrets = {}
    for name, value in (("web-token", "first-token-of-32-characters-ok"), ("mqtt-password", "broker-secret")):
        secrets[name] = tmp_path / name
        secrets[name].write_text(value + "\n")
    result = fake_pi.deploy(
        "--web-token-file", str(secrets["web-token"]), "--mqtt-password-file", str(secrets["mqtt-password"])
    )
    assert result.returncode == 0, result.stderr
    credentials = fake_pi.root / "etc/fer-edge/credentials"
    assert oct(credentials.stat().st_mode)[-3:] == "700"
    for name in secrets:
        assert (credentials / name).read_text() == secrets[name].read_text()
        assert oct((credentials / name).stat().st_mode)[-3:] == "600"
        for unit in ("fer-edge.service", "fer-edge@.service"):  # the camera instances load them too
            dropin = fake_pi.root / f"etc/systemd/system/{unit}.d/60-credential-{name}.conf"
            assert dropin.read_text() == f"[Service]\nLoadCredential={name}:/etc/fer-edge/credentials/{name}\n"
    assert not [p for p in (fake_pi.base / "staging").rglob(".secret-*")]  # the upload is gone, secrets with it
    assert "first-token" not in result.stdout + result.stderr
    secrets["web-token"].write_text("second-token-of-32-characters-ok\n")
    assert fake_pi.deploy("--web-token-file", str(secrets["web-token"])).returncode == 0
    assert (credentials / "web-token").read_text() == "second-token-of-32-characters-ok\n"
    secrets["web-token"].write_text("third-token-of-32-characters-ok\n")
    (fake_pi.state / "fail-next-start").touch()  # the service does not come up with it
    try:
        failed = fake_pi.deploy("--web-token-file", str(secrets["web-token"]))
    finally:
        (fake_pi.state / "fail-next-start").unlink(missing_ok=True)
        fake_pi.new_calls()
    assert failed.returncode != 0 and "previous credentials restored" in failed.stderr
    assert (credentials / "web-token").read_text() == "second-token-of-32-characters-ok\n"


def test_deploy_to_an_unreachable_pi_fails_with_ssh_s_reason(tmp_path):
    result = subprocess.run(
        [
            str(DEPLOY),
            "PI=nobody@127.0.0.1",
            "--port",
            str(_free_port()),
            "--ssh-option",
            "BatchMode=yes",
            "--ssh-option",
            f"UserKnownHostsFile={tmp_path / 'known_hosts'}",
            "--ssh-option",
            "ConnectTimeout=10",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    assert "Connection refused" in result.stderr
    assert "done: fer-edge" not in result.stderr


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--port", "abc"], "--port: expected a port number 1-65535, got 'abc'"),
        (["--port", "70000"], "--port: expected a port number 1-65535, got '70000'"),
        (["--port"], "--port needs a number"),
        (["--identity", "/nonexistent/id_ed25519"], "--identity: /nonexistent/id_ed25519 is not a readable file"),
        (["--staging"], "--staging needs a folder"),
    ],
    ids=["port-not-a-number", "port-too-high", "port-without-value", "identity-missing", "staging-without-value"],
)
def test_a_bad_deploy_option_is_one_line_before_anything_is_uploaded(args, expected, tmp_path):
    """ssh is never started: a port or key that cannot work used to surface as a failed upload."""
    called = tmp_path / "ssh-called"
    ssh = tmp_path / "fake-ssh"
    ssh.write_text(f"#!/bin/bash\ntouch {called}\nexit 255\n")
    ssh.chmod(0o755)
    result = subprocess.run(
        [str(DEPLOY), "PI=pi@fake", "--model-only", *args],
        env={**os.environ, "SSH": str(ssh)},
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f"deploy: error: {expected}"], result.stderr
    assert not called.exists()


# ssh [options] TARGET COMMAND: runs COMMAND here, in the login folder $HOME, as ssh would on the Pi.
FAKE_SSH = r"""#!/bin/bash
cd "$HOME" && exec bash -c "${!#}"
"""


def test_deploy_never_deletes_what_is_in_the_staging_folder(tmp_path):
    """--staging DIR (or ~/fer-edge-deploy) gets a new folder for the upload; only that one is removed."""
    env, _ = _stubbed_system(tmp_path / "system")
    home = tmp_path / "home"
    photos = home / "photos"
    photos.mkdir(parents=True)
    (photos / "a.jpg").write_bytes(b"a photo")
    earlier = home / "fer-edge-deploy"  # the default staging folder, with something of the user's in it
    earlier.mkdir()
    (earlier / "notes.txt").write_text("mine")
    ssh = tmp_path / "fake-ssh"
    ssh.write_text(FAKE_SSH)
    ssh.chmod(0o755)
    env = {**env, "HOME": str(home), "SSH": str(ssh)}
    # --model-only uploads the least; install.sh --help (under a --prefix) only shows where it was run from.
    install_args = ["--", "--prefix", str(tmp_path / "root"), "--help"]
    for staging, folder, kept in ((["--staging", str(photos)], photos, "a.jpg"), ([], earlier, "notes.txt")):
        result = subprocess.run(
            [str(DEPLOY), "PI=pi@fake", *staging, "--model-only", *install_args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            stdin=subprocess.DEVNULL,
        )
        assert result.returncode == 0, result.stderr
        assert [p.name for p in folder.iterdir()] == [kept]  # the user's file kept, the upload folder removed
        assert f"(default: {folder}/fer-edge-upload." in result.stdout  # install.sh ran from a new folder in it
    assert (photos / "a.jpg").read_bytes() == b"a photo" and (earlier / "notes.txt").read_text() == "mine"


def test_runtime_choice_follows_the_python(tmp_path):
    """ai-edge-litert on 64-bit Python >= 3.10, else tflite-runtime up to 3.11; 32-bit refused."""
    script = INSTALL.read_text()
    start, end = script.index("pi_requirements() {"), script.index("# NumPy stays")
    functions = script[start:end]
    results = {}
    for bits, version in (("64", "3.11"), ("64", "3.13"), ("32", "3.11"), ("64", "3.9"), ("32", "3.13")):
        fake_python = tmp_path / f"py{bits}-{version}"
        (fake_python / "bin").mkdir(parents=True)
        (fake_python / "bin/python").write_text(f"#!/bin/sh\necho {bits} {version}\n")
        (fake_python / "bin/python").chmod(0o755)
        shell = f'die() {{ echo "DIE $*"; exit 1; }}\nSRC={REPO}\nVENV={fake_python}\n{functions}\npi_requirements\n'
        out = subprocess.run(["bash", "-c", shell], capture_output=True, text=True).stdout
        results[(bits, version)] = {line.split(">")[0].split("<")[0].split("=")[0].strip() for line in out.splitlines()}
    for python in (("64", "3.11"), ("64", "3.13")):
        assert {"ai-edge-litert", "av", "numpy", "opencv-python-headless"} <= results[python]
        assert "tflite-runtime" not in results[python]
    assert {"tflite-runtime", "av"} <= results[("64", "3.9")] and "ai-edge-litert" not in results[("64", "3.9")]
    for python in (("32", "3.11"), ("32", "3.13")):
        assert results[python] == {
            "DIE 32-bit Python is not supported (no OpenCV, NumPy or LiteRT wheels for it): install the 64-bit "
            "Raspberry Pi OS"
        }


@pytest.mark.parametrize("link", ["recordings", "models", ""])
def test_install_never_follows_a_symbolic_link_the_service_could_have_made(model_only_pi, tmp_path, link):
    """The service can write /var/lib/fer-edge: a link it put there (to /etc, say) must not make the next
    install, as root, chmod, chown or write into the link's target."""
    pi = model_only_pi
    state_dir = pi.root / "var/lib/fer-edge"
    state_dir.parent.mkdir(parents=True)
    victim = tmp_path / "etc"  # stands for /etc
    victim.mkdir()
    victim.chmod(0o755)
    if link:
        state_dir.mkdir()
        (state_dir / link).symlink_to(victim)
    else:
        state_dir.symlink_to(victim)
    linked = state_dir / link if link else state_dir
    if link == "models":  # written by a model swap
        result = pi.install(_small_models(tmp_path, "a")[0])
    else:  # --python /bin/false: were the link followed, the install would go on and stop at the venv
        result = subprocess.run(
            ["bash", str(INSTALL), "--prefix", str(pi.root), "--no-apt", "--python", "/bin/false"],
            env=pi.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error:" in line]
    assert errors == [
        f"fer-edge install: error: /{linked.relative_to(pi.root)} is a symbolic link (to {victim}), "
        "not a folder: refusing to change its owner or mode as root; remove the link and install again"
    ]
    assert stat.S_IMODE(victim.stat().st_mode) == 0o755
    calls_log = pi.state / "calls.log"
    calls = calls_log.read_text().splitlines() if calls_log.exists() else []
    assert not [c for c in calls if c.startswith("chown") and str(linked) in c], calls
    assert linked.is_symlink() and not list(victim.iterdir())


def _release(folder: Path, version: str, rename: tuple[str, str] | None = None) -> Path:
    """A release as deploy.sh stages it, this checkout's with a version marker in the package and, with
    rename, one config key renamed (a release whose check-config refuses the installed config)."""
    folder.mkdir()
    for part in ("edge", "requirements-edge.txt", "requirements-pi.lock", "deploy", "systemd", "models"):
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, folder / part, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info", "build"))
        else:
            shutil.copy(source, folder / part)
    package = folder / "edge/fer_edge/__init__.py"
    package.write_text(package.read_text() + f'\nRELEASE = "{version}"\n')
    if rename:
        device = folder / "edge/fer_edge/config/device.py"
        text = device.read_text()
        assert f"    {rename[0]}: " in text
        device.write_text(text.replace(f"    {rename[0]}: ", f"    {rename[1]}: "))
    return folder


def _local_pi(tmp_path: Path):
    """install.sh --prefix on a fake Pi without ssh: install(release, *args), its environment, state, root."""
    _ensure_prerequisites()
    env, state = _stubbed_system(tmp_path / "system")
    env = {**env, "PYTHONPATH": str(_dist_packages(tmp_path / "dist-packages")), "PIP_NO_INDEX": "1"}
    root = tmp_path / "root"

    def install(release: Path, *args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [
                "bash",
                str(release / "deploy/install.sh"),
                "--src",
                str(release),
                "--prefix",
                str(root),
                "--no-apt",
                *args,
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    return install, env, state, root


def test_an_upgrade_that_fails_leaves_the_release_the_service_runs(tmp_path):
    """The running service keeps its packages in memory, but its next start (a crash, the watchdog, a reboot)
    loads them from the venv: a refused or failed upgrade must leave the venv as it was."""
    install, env, state, root = _local_pi(tmp_path)
    venv = root / "opt/fer-edge/venv"

    def running() -> str:
        probe = [str(venv / "bin/python"), "-c", "import fer_edge; print(fer_edge.RELEASE)"]
        return subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout.strip()

    unit = root / "etc/systemd/system/fer-edge.service"
    first = install(_release(tmp_path / "v1", "v1"))
    assert first.returncode == 0, first.stderr
    assert running() == "v1"
    installed_unit = unit.read_text()

    refusing = _release(tmp_path / "v2", "v2", rename=("status_interval_s", "status_every_s"))
    (refusing / "systemd/fer-edge.service").write_text(installed_unit + "# v2\n")
    result = install(refusing)
    assert result.returncode != 0
    assert "logging.status_interval_s: unknown key" in result.stderr
    assert "does not pass fer-edge check-config: service not (re)started" in result.stderr
    assert "put back the previous fer-edge and Python packages in /opt/fer-edge/venv" in result.stderr
    assert running() == "v1"
    assert unit.read_text() == installed_unit  # the units of the refused release are not installed either
    config = root / "etc/fer-edge/config.yaml"
    check = [str(venv / "bin/fer-edge"), "check-config", "--model-optional", "--config", str(config)]
    assert subprocess.run(check, env=env, capture_output=True).returncode == 0  # the unit's ExecStartPre

    (state / "fail-next-start").touch()
    result = install(_release(tmp_path / "v3", "v3"))
    assert result.returncode != 0
    assert "did not start (journalctl -u fer-edge): previous packages restored" in result.stderr
    assert running() == "v1"
    assert (state / "active").read_text().strip() == "active"  # restarted with v1

    again = install(_release(tmp_path / "v1-again", "v1"))
    assert again.returncode == 0, again.stderr
    assert "python packages unchanged" in again.stderr  # the stamp was put back with the venv
    upgrade = install(_release(tmp_path / "v4", "v4"))
    assert upgrade.returncode == 0, upgrade.stderr
    assert running() == "v4"
    assert sorted(p.name for p in (root / "opt/fer-edge").iterdir() if p.name.startswith("venv")) == ["venv"]


def test_an_upgrade_pip_cannot_install_says_so_and_leaves_the_release_the_service_runs(tmp_path):
    """No network for a new requirement (PIP_NO_INDEX plays it): one line says what failed."""
    install, env, _, root = _local_pi(tmp_path)
    assert install(_release(tmp_path / "v1", "v1")).returncode == 0
    offline = _release(tmp_path / "v2", "v2")
    (offline / "requirements-edge.txt").write_text(
        (offline / "requirements-edge.txt").read_text() + "fer-edge-package-on-no-index==1.0\n"
    )
    result = install(offline)
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("fer-edge install: error:")]
    assert errors == [
        "fer-edge install: error: pip could not install requirements-edge.txt (its error above: no network, or a "
        "wheel that does not match its hash?): service not (re)started"
    ]
    assert "Traceback" not in result.stderr
    probe = [str(root / "opt/fer-edge/venv/bin/python"), "-c", "import fer_edge; print(fer_edge.RELEASE)"]
    assert subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout.strip() == "v1"


def test_a_config_that_install_config_refuses_leaves_the_one_the_service_runs(tmp_path):
    """install.sh --config FILE replaces the config; when the check refuses FILE, the service's next start
    must still find the config it runs with, not FILE."""
    install, _, _, root = _local_pi(tmp_path)
    release = _release(tmp_path / "release", "v1")
    first = install(release)
    assert first.returncode == 0, first.stderr
    config = root / "etc/fer-edge/config.yaml"
    running = config.read_bytes()
    managed = tmp_path / "managed.yaml"
    managed.write_text(config.read_text().replace("status_interval_s: 60.0", "status_intervl_s: 60.0"))
    result = install(release, "--config", str(managed))
    assert result.returncode != 0
    assert "logging.status_intervl_s: unknown key" in result.stderr
    assert "put back the previous /etc/fer-edge/config.yaml" in result.stderr
    assert config.read_bytes() == running
    assert stat.S_IMODE(config.stat().st_mode) == 0o640
    managed.write_text(config.read_text().replace("status_interval_s: 60.0", "status_interval_s: 30.0"))
    accepted = install(release, "--config", str(managed))
    assert accepted.returncode == 0, accepted.stderr
    assert config.read_text() == managed.read_text()


def _restarts(state: Path) -> list[str]:
    calls = (state / "calls.log").read_text().splitlines()
    return [c.split()[2] for c in calls if c.split()[:2] in (["systemctl", "start"], ["systemctl", "restart"])]


def test_an_upgrade_restarts_every_running_instance_and_checks_each_config_first(tmp_path):
    """The venv is shared: a camera instance left running keeps the old code in memory until it restarts, and
    that restart (a crash, a reboot) loads the new code with a config nobody checked against it."""
    install, env, state, root = _local_pi(tmp_path)
    venv = root / "opt/fer-edge/venv"

    def running() -> str:
        probe = [str(venv / "bin/python"), "-c", "import fer_edge; print(fer_edge.RELEASE)"]
        return subprocess.run(probe, env=env, capture_output=True, text=True, check=True).stdout.strip()

    assert install(_release(tmp_path / "v1", "v1")).returncode == 0
    etc = root / "etc/fer-edge"
    for name, flag in (("door", "active"), ("till", "active"), ("yard", "inactive")):  # yard: stopped
        shutil.copy(etc / "config.yaml", etc / f"{name}.yaml")
        (state / f"active.fer-edge@{name}").write_text(f"{flag}\n")

    before = len(_restarts(state))
    upgrade = install(_release(tmp_path / "v2", "v2"))
    assert upgrade.returncode == 0, upgrade.stderr
    assert running() == "v2"
    assert _restarts(state)[before:] == ["fer-edge", "fer-edge@door", "fer-edge@till"]
    assert "restarting the other running instances on the new release too: fer-edge@door fer-edge@till" in (
        upgrade.stderr
    )
    out = upgrade.stderr
    assert out.index("config ok: /etc/fer-edge/till.yaml") < out.index("restarting fer-edge\n")  # checked first

    # A release that renames a key, with this config moved to the new name: the running till's is not.
    refusing = _release(tmp_path / "v3", "v3", rename=("status_interval_s", "status_every_s"))
    config = etc / "config.yaml"
    running_config = config.read_bytes()
    managed = tmp_path / "managed.yaml"
    managed.write_text(config.read_text().replace("status_interval_s:", "status_every_s:"))
    (etc / "door.yaml").write_text(managed.read_text())
    before = len(_restarts(state))
    refused = install(refusing, "--config", str(managed))
    assert refused.returncode != 0
    assert "logging.status_interval_s: unknown key" in refused.stderr
    errors = [line for line in refused.stderr.splitlines() if line.startswith("fer-edge install: error:")]
    assert errors == [
        "fer-edge install: error: /etc/fer-edge/till.yaml of the running fer-edge@till does not pass fer-edge "
        "check-config of this release: nothing (re)started"
    ]
    assert _restarts(state)[before:] == [] and running() == "v2" and config.read_bytes() == running_config
    shutil.copy(config, etc / "door.yaml")

    # An instance that does not come up on the new release: every service restarted goes back to the previous.
    (state / "fail-next-start.fer-edge@door").touch()
    before = len(_restarts(state))
    failed = install(_release(tmp_path / "v4", "v4"))
    assert failed.returncode != 0
    errors = [line for line in failed.stderr.splitlines() if line.startswith("fer-edge install: error:")]
    assert errors == [
        "fer-edge install: error: fer-edge@door did not start (journalctl -u fer-edge@door): previous packages restored"
    ]
    assert _restarts(state)[before:] == ["fer-edge", "fer-edge@door", "fer-edge", "fer-edge@door"]
    assert running() == "v2"
    assert (state / "active.fer-edge@yard").read_text() == "inactive\n"
