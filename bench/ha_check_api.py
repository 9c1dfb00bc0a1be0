"""The pieces of ``make ha-check`` (bench/ha_check.py) that talk: Home Assistant's REST API, the broker, processes."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import yaml

REPO = Path(__file__).resolve().parent.parent
POLL_S = 0.01
DEVICE = "hacheck"
UID = f"fer-edge-{DEVICE}"
GUEST_CONFIG = "/mnt/ha-config"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(what: str, check: Any, timeout: float, every: float = POLL_S) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


class HomeAssistant:
    """Its REST API on 127.0.0.1:port."""

    def __init__(self, port: int) -> None:
        self.base = f"http://127.0.0.1:{port}"
        self.token: str | None = None

    def request(self, method: str, path: str, body: Any = None, form: dict | None = None, raw: bool = False) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        req = urllib.request.Request(self.base + path, data=data, headers=headers, method=method)
        with urllib.request.urlopen(req, timeout=30) as response:
            payload = response.read()
        return payload if raw else json.loads(payload or b"null")

    def up(self) -> bool:
        """Before onboarding: its steps are served; after (a restart): the API answers the token."""
        try:
            if self.token is None:
                return isinstance(self.request("GET", "/api/onboarding"), list)
            return bool(self.request("GET", "/api/"))
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def onboard(self) -> None:
        client_id = self.base + "/"
        user = self.request(
            "POST",
            "/api/onboarding/users",
            {
                "client_id": client_id,
                "name": "ha-check",
                "username": "ha-check",
                "password": os.urandom(12).hex(),
                "language": "en",
            },
        )
        token = self.request(
            "POST",
            "/auth/token",
            form={"grant_type": "authorization_code", "code": user["auth_code"], "client_id": client_id},
        )
        self.token = token["access_token"]
        self.request("POST", "/api/onboarding/core_config", {})
        self.request("POST", "/api/onboarding/analytics", {})
        self.request("POST", "/api/onboarding/integration", {"client_id": client_id, "redirect_uri": client_id})

    def add_mqtt(self, port: int) -> dict:
        flow = self.request(
            "POST", "/api/config/config_entries/flow", {"handler": "mqtt", "show_advanced_options": False}
        )
        while flow.get("type") == "form":
            answers = {"broker": "127.0.0.1", "port": port} if flow.get("step_id") == "broker" else {}
            flow = self.request("POST", f"/api/config/config_entries/flow/{flow['flow_id']}", answers)
        if flow.get("type") != "create_entry":
            raise RuntimeError(f"the MQTT config flow ended with {flow}")
        return flow

    def states(self) -> dict[str, dict]:
        return {state["entity_id"]: state for state in self.request("GET", "/api/states")}

    def state(self, entity_id: str) -> dict:
        return self.request("GET", f"/api/states/{entity_id}")

    def template(self, text: str) -> Any:
        return json.loads(self.request("POST", "/api/template", {"template": text}, raw=True))

    def switch(self, entity_id: str, on: bool) -> None:
        self.request("POST", f"/api/services/switch/turn_{'on' if on else 'off'}", {"entity_id": entity_id})

    def image(self, entity_id: str) -> bytes:
        try:
            return self.request("GET", f"/api/image_proxy/{entity_id}", raw=True)
        except urllib.error.HTTPError:
            return b""


class Listener:
    """Every message on the broker, with its arrival time."""

    def __init__(self, port: int) -> None:
        self.seen: list[tuple[float, str, bytes, bool]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe([("fer-edge/#", 1), ("homeassistant/#", 1)])
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        with self.lock:
            self.seen.append((time.time(), message.topic, message.payload, message.retain))

    def payloads(self, topic: str, since: float = 0.0) -> list[bytes]:
        return [payload for _, payload in self.messages(topic, since)]

    def messages(self, topic: str, since: float = 0.0) -> list[tuple[float, bytes]]:
        with self.lock:
            return [(t, payload) for t, got, payload, _ in self.seen if got == topic and t >= since]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Checks:
    def __init__(self) -> None:
        self.rows: list[dict] = []

    def add(self, name: str, ok: bool, figure: str, **data: Any) -> None:
        self.rows.append({"check": name, "passed": bool(ok), "figure": figure, **data})
        print(f"ha-check: {'PASS' if ok else 'FAIL'} {name}: {figure}", file=sys.stderr, flush=True)


def stop(process: subprocess.Popen | None, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
    if process is None or process.poll() is not None:
        return
    process.send_signal(sig)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def connects(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


def ms(seconds: float) -> int:
    return round(seconds * 1000)


def inside(*command: str, binds: str = "") -> tuple[list[str], dict[str, str]]:
    """``command`` run in the userland through bench/ha_check.sh, with ``binds`` (host:guest ...) mounted there."""
    return [str(REPO / "bench/ha_check.sh"), "--inside", *command], {**os.environ, "HA_BIND": binds}


def run_inside(*command: str) -> str:
    cmd, env = inside(*command)
    return subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout


class Run:
    """The three processes and what they share; ``close`` stops them in the order that keeps the logs clean."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args, self.work = args, work
        self.processes: dict[str, subprocess.Popen | None] = {"fer-edge": None, "hass": None, "mosquitto": None}
        self.listener: Listener | None = None
        self.broker_port, self.ha_port, self.web_port = free_port(), free_port(), free_port()
        self.ha = HomeAssistant(self.ha_port)

    def start_broker(self) -> Listener:
        conf = self.work / "mosquitto.conf"
        conf.write_text(f"listener {self.broker_port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
        self.processes["mosquitto"] = subprocess.Popen(
            [self.args.mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until("mosquitto", lambda: connects(self.broker_port), 10, 0.05)
        self.listener = Listener(self.broker_port)
        return self.listener

    def start_home_assistant(self) -> float:
        """Start it (again, after a stop: same config folder) and wait for its API; the seconds that took."""
        config = self.work / "config"
        config.mkdir(exist_ok=True)
        core = {"name": "ha-check", "time_zone": "UTC", "unit_system": "metric", "country": "DE"}
        settings = {
            "homeassistant": {**core, "latitude": 0, "longitude": 0, "elevation": 0},
            "http": {"server_host": "127.0.0.1", "server_port": self.ha_port},
            "recorder": {"commit_interval": 1},  # the calm check reads the history a few seconds after its window
            "history": {},
            "logger": {"default": "info"},
        }
        (config / "configuration.yaml").write_text(yaml.safe_dump(settings))
        t0 = time.time()
        cmd, env = inside(f"{self.args.venv}/bin/hass", "-c", GUEST_CONFIG, binds=f"{config}:{GUEST_CONFIG}")
        with open(self.work / "hass.err", "ab") as err:
            self.processes["hass"] = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=err)
        wait_until("Home Assistant's API", self.ha.up, 600, 0.5)
        return time.time() - t0

    def start_fer_edge(self) -> float:
        config = self.work / "fer-edge.yaml"
        settings = {
            "source": {"kind": "file", "path": self.args.clip, "realtime": True, "loop": True},
            "recording": {"output_dir": str(self.work / "out"), "segment_seconds": 10.0},
            "web": {"enabled": True, "listen": f"127.0.0.1:{self.web_port}"},
            "mqtt": {"enabled": True, "host": "127.0.0.1", "port": self.broker_port, "device_id": DEVICE},
        }
        config.write_text(yaml.safe_dump(settings))
        path = os.pathsep.join(filter(None, [str(REPO / "edge"), str(REPO), os.environ.get("PYTHONPATH")]))
        with open(self.work / "fer-edge.log", "wb") as err:
            self.processes["fer-edge"] = subprocess.Popen(
                [sys.executable, "-m", "fer_edge.cli", "run", "--config", str(config)],
                stdout=subprocess.DEVNULL,
                stderr=err,
                env={**os.environ, "PYTHONPATH": path},
            )
        return time.time()

    def close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        for process in self.processes.values():  # fer-edge, Home Assistant, then the broker they use
            stop(process)


USERLAND_FACTS = (
    "import json, platform; print(json.dumps({'python': platform.python_version(), "
    "'debian': open('/etc/debian_version').read().strip()}))"
)


def say(text: str) -> None:
    print(f"ha-check: {text}", file=sys.stderr, flush=True)


def iso(t: float) -> str:
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()


def lines(path: Path) -> list[str]:
    return path.read_text(errors="replace").splitlines() if path.exists() else []


def max_pixel(jpeg: bytes) -> int | None:
    import cv2
    import numpy as np

    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_GRAYSCALE) if jpeg else None
    return None if image is None else int(image.max())


def machine() -> str:
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{os.cpu_count()}-core {platform.machine()} ({model}), Python {platform.python_version()} on the host"
