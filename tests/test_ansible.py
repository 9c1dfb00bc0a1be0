"""deploy/ansible/site.yml: a rolling update over ssh to two stand-in Pis, one rolled back by its health gate.

Each stand-in Pi is an sshd on its own loopback address (127.0.0.2, 127.0.0.3) whose sessions see, as in
tests/test_deploy.py, logging stubs for the system commands and a folder that plays apt's dist-packages,
and install.sh runs with --prefix into a scratch root. Its systemctl stub is a small service manager: start
runs the unit's check-config and then the installed `fer-edge run` with the unit's config as a real process,
so the playbook's health gate asks a real /api/stats for frames.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from test_deploy import NOT_FROM_APT, SSHD, STUB, STUBBED, SYSTEM_PYTHON, _site_packages

REPO = Path(__file__).resolve().parents[1]
ANSIBLE = REPO / "deploy" / "ansible"
CLIP = REPO / "assets" / "demo.mp4"
EDGE_VENV = REPO / ".venv-edge"
PLAYBOOK_BIN = shutil.which("ansible-playbook", path=str(Path(sys.executable).parent)) or shutil.which(
    "ansible-playbook"
)
needs_ansible = pytest.mark.skipif(
    PLAYBOOK_BIN is None, reason="ansible-playbook missing: ansible-core is in requirements-dev.txt (make test)"
)

# systemctl on the stand-in Pi, a small service manager with Type=notify's contract: start/restart run the
# unit's ExecStartPre (check-config), then ExecStart as a real process with $NOTIFY_SOCKET, and return only
# once it sends READY=1 (after its first frame), failing if it exits first or takes over a minute.
SYSTEMCTL = r"""#!/usr/bin/python3
import os, signal, socket, subprocess, sys, time
state, root = os.environ["FAKE_PI_STATE"], os.environ["FAKE_PI_ROOT"]
args = sys.argv[1:]
with open(f"{state}/calls.log", "a") as log:
    log.write("systemctl " + " ".join(args) + "\n")
fer_edge = f"{root}/opt/fer-edge/venv/bin/fer-edge"

def config_of(unit):
    unit = unit.removesuffix(".service")
    name = unit.partition("@")[2] or "config"
    return f"{root}/etc/fer-edge/{name}.yaml"

def pid_of(unit):
    try:
        return int(open(f"{state}/{unit}.pid").read())
    except (OSError, ValueError):
        return None

def alive(unit):
    pid = pid_of(unit)
    try:
        return pid is not None and open(f"/proc/{pid}/stat").read().split(")")[-1].split()[0] not in "ZX"
    except OSError:
        return False

def stop(unit):
    if alive(unit):
        os.kill(pid_of(unit), signal.SIGTERM)
        for _ in range(150):
            if not alive(unit):
                break
            time.sleep(0.1)

command = args[0] if args else ""
if command == "--version":
    print("systemd 252 (fake)")
elif command == "is-active":
    active = alive(args[-1])
    print("active" if active else "inactive")
    sys.exit(0 if active else 3)
elif command in ("start", "restart"):
    unit = args[1]
    stop(unit)
    # LoadCredential= in the drop-ins install.sh wrote: the service reads its secrets from there
    credentials = {"CREDENTIALS_DIRECTORY": f"{root}/etc/fer-edge/credentials"}
    if not os.path.isdir(credentials["CREDENTIALS_DIRECTORY"]):
        credentials = {}
    if subprocess.run([fer_edge, "check-config", "--quiet", "--config", config_of(unit)],
                      env={**os.environ, **credentials}).returncode:
        sys.exit(1)
    address = f"{state}/{unit}.notify"
    if os.path.exists(address):
        os.unlink(address)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(0.5)
    out = open(f"{state}/{unit}.log", "ab")
    child = subprocess.Popen([fer_edge, "run", "--config", config_of(unit)],
                             env={**os.environ, **credentials, "NOTIFY_SOCKET": address},
                             stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True)
    open(f"{state}/{unit}.pid", "w").write(str(child.pid))
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if b"READY=1" in sock.recv(4096).split(b"\n"):
                sys.exit(0)
        except socket.timeout:
            pass
        if child.poll() is not None:
            break
    print(f"Job for {unit}.service failed (no READY=1)", file=sys.stderr)
    sys.exit(1)
elif command == "stop" or (command == "disable" and "--now" in args):
    stop(args[-1])
"""


WEB_TOKEN = "a-token-from-the-vault"
CAM2_TOKEN = "cam2-has-a-token-file-of-its-own"  # web.token_file in its config, which beats the credential


def _free_port(address: str) -> int:
    import socket

    with socket.socket() as sock:
        sock.bind((address, 0))
        return sock.getsockname()[1]


@dataclass
class StandInPi:
    name: str
    address: str
    port: int
    base: Path
    root: Path
    state: Path
    web_port: int
    second_web_port: int  # pi-b's second camera instance
    sshd: subprocess.Popen

    def calls(self) -> list[str]:
        log = self.state / "calls.log"
        return log.read_text().splitlines() if log.exists() else []

    def current_release(self) -> str:
        return (self.root / "opt/fer-edge/releases/current").readlink().name

    def pid(self, unit: str) -> int:
        return int((self.state / f"{unit}.pid").read_text())

    def stats(self, port: int | None = None, token: str = WEB_TOKEN) -> dict:
        request = urllib.request.Request(
            f"http://127.0.0.1:{port or self.web_port}/api/stats", headers={"Authorization": f"Bearer {token}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.load(response)


def _stand_in_pi(base: Path, name: str, address: str, user_key: Path) -> StandInPi:
    base.mkdir()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(base / "host_key")], check=True)
    shutil.copy(user_key.with_suffix(".pub"), base / "authorized_keys")
    stubs, state, root = base / "stubs", base / "state", base / "root"
    for folder in (stubs, state, root):
        folder.mkdir()
    (stubs / "fake-pi-command").write_text(STUB)
    (stubs / "fake-pi-command").chmod(0o755)
    for command in STUBBED:
        if command != "systemctl":
            (stubs / command).symlink_to("fake-pi-command")
    (stubs / "systemctl").write_text(SYSTEMCTL)
    (stubs / "systemctl").chmod(0o755)
    (state / "passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (state / "group").write_text("root:x:0:\nvideo:x:44:\n")
    (state / "systemd-version").write_text("252\n")
    dist_packages = base / "dist-packages"
    dist_packages.mkdir()
    for entry in _site_packages(EDGE_VENV).iterdir():
        if entry.suffix == ".pth" or entry.name == "__pycache__" or entry.name.startswith(NOT_FROM_APT):
            continue
        (dist_packages / entry.name).symlink_to(entry)
    port = _free_port(address)
    env_line = (
        f"PATH={stubs}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin PYTHONPATH={dist_packages} PIP_NO_INDEX=1 "
        f"FAKE_PI_STATE={state} FAKE_PI_ROOT={root}"
    )
    (base / "sshd_config").write_text(
        f"ListenAddress {address}\nPort {port}\nHostKey {base / 'host_key'}\nPidFile {base / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {base / 'authorized_keys'}\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
        f"KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nSetEnv {env_line}\n"
        "Subsystem sftp internal-sftp\n"
    )
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    log = open(base / "sshd.log", "w")
    sshd = subprocess.Popen([SSHD, "-D", "-e", "-f", str(base / "sshd_config")], stderr=log)
    return StandInPi(name, address, port, base, root, state, _free_port("127.0.0.1"), _free_port("127.0.0.1"), sshd)


def _inventory(pis: list[StandInPi], user_key: Path, known_hosts: Path, broken: str | None) -> dict:
    """Host a runs the plain service, host b two camera instances; `broken` gets a camera that is not there."""
    hosts = {}
    for pi in pis:
        paths = {
            "model": {"path": str(pi.root / "var/lib/fer-edge/models/current/model.tflite")},
            "recording": {"output_dir": str(pi.root / "var/lib/fer-edge/recordings"), "presence_triggered": False},
            "source": {"kind": "file", "path": str(CLIP), "loop": True, "realtime": True},
            "web": {"enabled": True, "listen": f"127.0.0.1:{pi.web_port}"},
            "logging": {"status_interval_s": 5.0},
        }
        if pi.name == broken:  # passes check-config, sends READY after its first frame, then ends (two images)
            paths["source"] = {"kind": "images", "path": str(pi.base / "two-frames"), "loop": False}
            (pi.base / "two-frames").mkdir(exist_ok=True)
            for index in range(2):
                shutil.copy(REPO / "docs/demo-frame.png", pi.base / "two-frames" / f"{index}.png")
        host = {
            "ansible_host": pi.address,
            "ansible_port": pi.port,
            "fer_edge_root": str(pi.root),
            "fer_edge_install_args": ["--prefix", str(pi.root)],
        }
        if pi.name == "pi-a":
            host |= {"fer_edge_device_id": "hall", "fer_edge_config": paths}
        else:
            token_file = pi.base / "cam2-token"
            token_file.write_text(CAM2_TOKEN + "\n")
            token_file.chmod(0o600)
            instances = [("cam1", pi.web_port, {}), ("cam2", pi.second_web_port, {"token_file": str(token_file)})]
            host["fer_edge_instances"] = [
                {
                    "name": name,
                    "web_port": port,
                    "device_id": f"shop-{name}",
                    "config": {  # the playbook's own recording folder, under the scratch root
                        "recording": {"output_dir": str(pi.root / "var/lib/fer-edge" / name)},
                        "web": web,
                    },
                }
                for name, port, web in instances
            ]
            host["fer_edge_config"] = paths
        hosts[pi.name] = host
    return {
        "fer_edge": {
            "vars": {
                "ansible_user": "root",
                "ansible_python_interpreter": SYSTEM_PYTHON,
                "ansible_ssh_private_key_file": str(user_key),
                "ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes "
                "-o IdentitiesOnly=yes -o BatchMode=yes",
                "fer_edge_become": False,
                "fer_edge_health_delay": 1,
                "fer_edge_health_retries": 8,
                "fer_edge_web_token": WEB_TOKEN,  # a vault-encrypted string in real use
                "fer_edge_mqtt_password_file": str(user_key.parent / "mqtt-password"),
            },
            "hosts": hosts,
        }
    }


def _playbook(inventory: dict, work: Path, *extra: str) -> subprocess.CompletedProcess:
    path = work / f"inventory-{time.monotonic_ns()}.yml"
    path.write_text(yaml.safe_dump(inventory))
    env = {
        **os.environ,
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(work / "ansible-local"),
        "ANSIBLE_HOME": str(work / "ansible-home"),
        "TMPDIR": str(work),
        "ANSIBLE_SSH_CONTROL_PATH_DIR": str(work / "cp"),
    }
    env.pop("PYTHONPATH", None)
    return subprocess.run(
        [PLAYBOOK_BIN, "-v", "-i", str(path), str(ANSIBLE / "site.yml"), *extra],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )


@needs_ansible
def test_the_playbook_and_the_example_inventory_pass_the_syntax_check():
    result = subprocess.run(
        [PLAYBOOK_BIN, "--syntax-check", "-i", str(ANSIBLE / "inventory.example.yml"), str(ANSIBLE / "site.yml")],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1"},
    )
    assert result.returncode == 0, result.stdout + result.stderr
    inventory = yaml.safe_load((ANSIBLE / "inventory.example.yml").read_text())
    assert set(inventory["fer_edge"]["hosts"]) == {"hall-pi", "shop-pi"}


@needs_ansible
def test_a_dry_run_on_a_fresh_controller_packs_the_release_it_would_roll_out(tmp_path):
    """--check skips shell tasks; the release id is the packed tarball's checksum, so packing runs anyway: without
    it a dry run failed on a controller that never packed one, and showed an earlier run's release elsewhere."""
    inventory = tmp_path / "inventory.yml"
    unreachable = {"ansible_host": "127.0.0.1", "ansible_port": _free_port("127.0.0.1")}
    inventory.write_text(yaml.safe_dump({"fer_edge": {"hosts": {"nowhere-pi": unreachable}}}))
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "TMPDIR": str(tmp_path), "ANSIBLE_HOME": str(tmp_path / "home")}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [PLAYBOOK_BIN, "--check", "-i", str(inventory), str(ANSIBLE / "site.yml")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    recap = result.stdout[result.stdout.index("PLAY RECAP") :]
    assert "localhost                  : ok=2    changed=0    unreachable=0    failed=0" in recap, result.stdout
    assert (tmp_path / "fer-edge-release.tar.gz").stat().st_size > 0
    assert "nowhere-pi" in recap and "unreachable=1" in recap  # the Pi part ran, against a Pi that is not there


def _releases(folder: Path, names: list[str], current: str | None) -> Path:
    """Release folders as the rollouts left them, the first the oldest (an hour apart), `current` linked."""
    folder.mkdir(parents=True, exist_ok=True)
    now = time.time()
    for age, name in enumerate(reversed(names), start=1):
        (folder / name / "config").mkdir(parents=True)
        os.utime(folder / name, (now - 3600 * age, now - 3600 * age))
    if current:
        (folder / "current").symlink_to(current)
    return folder


PRUNE_PLAYBOOK = """- hosts: localhost
  connection: local
  gather_facts: false
  tasks:
    - name: The release the Pi ran before this rollout
      ansible.builtin.stat:
        path: "{{ releases }}/current"
      register: current
    - ansible.builtin.import_tasks: %s
"""


@needs_ansible
@pytest.mark.parametrize(
    ("keep", "check", "kept"),
    [
        (None, False, {"r6", "r0", "r5"}),  # three: the new one, the one it replaced (the oldest), the newest other
        (1, False, {"r6", "r0"}),  # never the one in use or the rollback target, however few are asked for
        (5, False, {"r6", "r0", "r5", "r4", "r3"}),
        (None, True, {f"r{i}" for i in range(7)}),  # a dry run only lists them
    ],
)
def test_a_pi_keeps_the_active_release_the_one_it_replaced_and_the_newest_others(tmp_path, keep, check, kept):
    """Every config change makes a release (about 5 MB) in /opt/fer-edge/releases: a Pi's SD card filled."""
    releases = _releases(tmp_path / "releases", [f"r{i}" for i in range(6)], current="r0")
    (releases / "r6" / "config").mkdir(parents=True)  # this rollout's release, just made
    playbook = tmp_path / "prune.yml"
    playbook.write_text(PRUNE_PLAYBOOK % (ANSIBLE / "prune-releases.yml"))
    extra = ["-e", f"releases={releases}", "-e", "release=r6", "-e", f"ansible_python_interpreter={SYSTEM_PYTHON}"]
    extra += ["-e", f"fer_edge_keep_releases={keep}"] if keep is not None else []
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path)}
    env.pop("PYTHONPATH", None)
    result = subprocess.run(
        [PLAYBOOK_BIN, "-i", "localhost,", str(playbook), *extra, *(["--check"] if check else [])],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert {p.name for p in releases.iterdir() if not p.is_symlink()} == kept
    assert (releases / "current").readlink() == Path("r0")
    if check:  # what a real run would remove
        assert all(f"(item=r{i})" in result.stdout for i in (1, 2, 3, 4)), result.stdout
        assert "(item=r5)" not in result.stdout and "(item=r0)" not in result.stdout


@needs_ansible
def test_a_release_deployed_again_counts_as_new_when_the_others_are_pruned(tmp_path):
    """r0-r5 (r5 active), r1 deployed again, then r6, then r7: r1 ran after r5 did, so r1 is the third kept."""
    releases = _releases(tmp_path / "releases", [f"r{i}" for i in range(6)], current="r5")
    playbook = tmp_path / "prune.yml"
    playbook.write_text(PRUNE_PLAYBOOK % (ANSIBLE / "prune-releases.yml"))
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_HOME": str(tmp_path / "home"), "TMPDIR": str(tmp_path)}
    env.pop("PYTHONPATH", None)
    for release in ("r1", "r6", "r7"):
        (releases / release / "config").mkdir(parents=True, exist_ok=True)
        extra = ["-e", f"releases={releases}", "-e", f"release={release}"]
        extra += ["-e", f"ansible_python_interpreter={SYSTEM_PYTHON}"]
        result = subprocess.run(
            [PLAYBOOK_BIN, "-i", "localhost,", str(playbook), *extra],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
        (releases / "current").unlink()
        (releases / "current").symlink_to(release)  # site.yml marks it current before it prunes
    assert {p.name for p in releases.iterdir() if not p.is_symlink()} == {"r7", "r6", "r1"}


@pytest.fixture(scope="module")
def rollout(tmp_path_factory):
    if PLAYBOOK_BIN is None:
        pytest.skip("ansible-playbook missing: ansible-core is in requirements-dev.txt (make test)")
    if not Path(SSHD).exists() or not EDGE_VENV.exists():
        pytest.skip("!!! ANSIBLE TEST NOT RUN: needs sshd (.ci/run installs it) and .venv-edge (make test) !!!")
    work = tmp_path_factory.mktemp("ansible")
    user_key = work / "user_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(user_key)], check=True)
    (work / "mqtt-password").write_text("a-password-from-a-file")
    pis = [
        _stand_in_pi(work / "pi-a", "pi-a", "127.0.0.2", user_key),
        _stand_in_pi(work / "pi-b", "pi-b", "127.0.0.3", user_key),
    ]
    known_hosts = work / "known_hosts"
    with known_hosts.open("w") as out:
        for pi in pis:
            key = (pi.base / "host_key.pub").read_text().split()
            out.write(f"[{pi.address}]:{pi.port} {key[0]} {key[1]}\n")
    try:
        yield pis, work, user_key, known_hosts
    finally:
        for pi in pis:
            for pid_file in pi.state.glob("*.pid"):
                try:
                    os.kill(int(pid_file.read_text()), 15)
                except (ProcessLookupError, ValueError):
                    pass
            pi.sshd.terminate()
            pi.sshd.wait(timeout=10)


@pytest.fixture(scope="module")
def first_rollout(rollout):
    pis, work, user_key, known_hosts = rollout
    # b has run four releases before, the oldest its current one (what a failure here would go back to)
    _releases(pis[1].root / "opt/fer-edge/releases", ["old1", "old2", "old3", "old4"], current="old1")
    # a rollout interrupted on a, after it handed its secrets over
    left_over = pis[0].root / "etc/fer-edge/credentials/.incoming.Kq3x9z"
    left_over.mkdir(parents=True)
    (left_over / "web-token").write_text(WEB_TOKEN)
    result = _playbook(_inventory(pis, user_key, known_hosts, broken=None), work)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    return result


@pytest.mark.slow
@needs_ansible
def test_a_rollout_installs_both_pis_and_passes_their_health_gates(rollout, first_rollout):
    pis, work, *_ = rollout
    a, b = pis
    config_a = yaml.safe_load((a.root / "etc/fer-edge/config.yaml").read_text())
    assert config_a["mqtt"]["device_id"] == "hall" and config_a["source"]["path"] == str(CLIP)
    config_b = yaml.safe_load((b.root / "etc/fer-edge/cam1.yaml").read_text())
    assert config_b["mqtt"]["device_id"] == "shop-cam1" and config_b["web"]["listen"] == f"127.0.0.1:{b.web_port}"
    assert not (b.root / "etc/fer-edge/config.yaml").exists()  # instances only on b
    assert list((b.root / "var/lib/fer-edge/cam2").glob("*.jsonl"))
    assert (b.root / "etc/systemd/system/fer-edge@.service").read_text() == (
        REPO / "systemd/fer-edge@.service"
    ).read_text()
    assert a.stats()["frames"] > 0 and b.stats()["frames"] > 0
    assert b.stats(b.second_web_port, CAM2_TOKEN)["frames"] > 0
    with pytest.raises(urllib.error.HTTPError) as refused:  # the service took its token from the credential
        urllib.request.urlopen(f"http://127.0.0.1:{a.web_port}/api/stats", timeout=5)
    assert refused.value.code == 401
    for pi, unit in ((a, "fer-edge"), (b, "fer-edge@cam1")):
        calls = pi.calls()
        assert f"systemctl restart {unit}" in calls or f"systemctl start {unit}" in calls
        credential = pi.root / "etc/fer-edge/credentials/web-token"
        assert credential.read_text() == "a-token-from-the-vault" and oct(credential.stat().st_mode)[-3:] == "600"
        assert (pi.root / "etc/fer-edge/credentials/mqtt-password").read_text() == "a-password-from-a-file"
        assert sorted(p.name for p in (pi.root / "etc/fer-edge/credentials").iterdir()) == [
            "mqtt-password",
            "web-token",
        ]  # the copies handed to install.sh are gone, those of an interrupted rollout too
        handed_over = f"web-token={pi.root}/etc/fer-edge/credentials/.incoming."  # install.sh --credential
        assert handed_over in first_rollout.stdout
        for unit in ("fer-edge.service", "fer-edge@.service"):
            dropin = pi.root / f"etc/systemd/system/{unit}.d/60-credential-web-token.conf"
            assert "LoadCredential=web-token:/etc/fer-edge/credentials/web-token" in dropin.read_text()
        assert "a-token-from-the-vault" not in first_rollout.stdout  # no_log: secrets stay out of the output
    # install.sh's own lines (-v): each config passed check-config before its restart
    for config, unit in (("config.yaml", "fer-edge"), ("cam1.yaml", "fer-edge@cam1")):
        out = first_rollout.stdout
        (work / "first-rollout.log").write_text(out)
        assert f"config ok: /etc/fer-edge/{config}" in out and f"starting {unit}" in out, out[-3000:]
        assert out.index(f"config ok: /etc/fer-edge/{config}") < out.rindex(f"starting {unit}")


@pytest.mark.slow
@needs_ansible
def test_a_rollout_removes_old_releases_but_the_active_one_and_the_one_it_replaced(rollout, first_rollout):
    pis, *_ = rollout
    b = pis[1]
    kept = {p.name for p in (b.root / "opt/fer-edge/releases").iterdir() if not p.is_symlink()}
    assert kept == {b.current_release(), "old1", "old4"}  # fer_edge_keep_releases (3): old1 is the rollback target
    assert "(item=old2)" in first_rollout.stdout and "(item=old3)" in first_rollout.stdout


@pytest.mark.slow
@needs_ansible
def test_a_dry_run_of_a_new_release_changes_nothing_on_the_pis(rollout, first_rollout):
    pis, work, user_key, known_hosts = rollout
    a = pis[0]
    inventory = _inventory(pis, user_key, known_hosts, broken=None)
    inventory["fer_edge"]["hosts"]["pi-a"]["fer_edge_config"]["logging"]["status_interval_s"] = 7.0  # a new release
    old = ["old1", "old2", "old3"]  # older than a's current release: a real run would remove two of them
    _releases(a.root / "opt/fer-edge/releases", old, current=None)
    try:
        releases = sorted((a.root / "opt/fer-edge/releases").iterdir())
        config = (a.root / "etc/fer-edge/config.yaml").read_text()
        calls = a.calls()
        result = _playbook(inventory, work, "--check")
        assert result.returncode == 0, result.stdout[-4000:]
        assert sorted((a.root / "opt/fer-edge/releases").iterdir()) == releases
        assert (a.root / "etc/fer-edge/config.yaml").read_text() == config
        assert a.calls() == calls  # no install, no restart
        assert "(item=old1)" in result.stdout and "(item=old2)" in result.stdout  # listed, not removed
    finally:
        for name in old:
            shutil.rmtree(a.root / "opt/fer-edge/releases" / name)


@pytest.mark.slow
@needs_ansible
def test_a_pi_failing_its_health_gate_is_rolled_back_and_the_rollout_stops(rollout, first_rollout):
    pis, work, user_key, known_hosts = rollout
    a, b = pis
    release_a, release_b = a.current_release(), b.current_release()
    b_calls, b_pid = b.calls(), b.pid("fer-edge@cam1")
    good_config = (a.root / "etc/fer-edge/config.yaml").read_text()

    result = _playbook(_inventory(pis, user_key, known_hosts, broken="pi-a"), work)
    output = result.stdout + result.stderr
    assert result.returncode != 0, output[-4000:]
    (work / "second-rollout.log").write_text(output)
    assert "Health gate: the service stays active" in output, output[-4000:]
    assert "Reinstall the previous release" in output
    assert f"failed on pi-a (put back on {release_a})" in output
    # a: new release tried (and its config checked), then the previous one reinstalled and running again
    assert a.current_release() == release_a
    assert (a.root / "etc/fer-edge/config.yaml").read_text() == good_config
    releases = {p.name for p in (a.root / "opt/fer-edge/releases").iterdir() if not p.is_symlink()}
    assert len(releases) == 2  # the failed one stays for a look, `current` does not point at it
    deadline = time.monotonic() + 30
    while True:
        try:
            if a.stats()["frames"] > 0:
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "pi-a does not run again after the rollback"
        time.sleep(1)
    # b: not touched at all
    assert b.calls() == b_calls and b.current_release() == release_b and b.pid("fer-edge@cam1") == b_pid
    assert "pi-b" not in [line.split()[1].strip("[]:") for line in output.splitlines() if line.startswith("ok: [")]


@pytest.mark.slow
@needs_ansible
def test_a_new_model_restarts_each_instance_of_a_pi_once(rollout, first_rollout):
    """The model is shared: installing cam1 restarts the other running instances too, but not cam2, which the
    rollout installs next itself (--leave); otherwise cam2 would be checked with its old config and restarted
    twice."""
    pis, work, user_key, known_hosts = rollout
    b = pis[1]
    inventory = _inventory(pis, user_key, known_hosts, broken=None)
    inventory["fer_edge"]["hosts"] = {"pi-b": inventory["fer_edge"]["hosts"]["pi-b"]}
    inventory["fer_edge"]["vars"]["fer_edge_model"] = "models/fer_fast_int8.tflite"
    before = len(b.calls())
    result = _playbook(inventory, work)
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]
    restarts = [c.split()[-1] for c in b.calls()[before:] if c.startswith(("systemctl restart", "systemctl start"))]
    assert sorted(restarts) == ["fer-edge@cam1", "fer-edge@cam2"], b.calls()[before:]
    model = b.root / "var/lib/fer-edge/models/current/model.tflite"
    assert model.read_bytes() == (REPO / "models/fer_fast_int8.tflite").read_bytes()
    assert b.stats()["frames"] > 0
