"""The device this installation announced to Home Assistant last time, kept in the service's state folder.

Changing ``mqtt.device_id``, the host name it defaults to, ``topic_prefix`` or ``discovery_prefix`` announces a new
device; the old one's retained discovery stays on the broker, and Home Assistant keeps it as a device that is never
available again. So the topics announced are written to ``$STATE_DIRECTORY/mqtt-announced.json`` (systemd's
``StateDirectory=``: its own for each camera instance), and a run that announces other ones first clears the old
ones: an empty retained discovery message removes the device from Home Assistant. Without ``STATE_DIRECTORY`` (a run
by hand) nothing is kept.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

ANNOUNCED_NAME = "mqtt-announced.json"
MAX_ANNOUNCED_BYTES = 16 * 1024


def announced_path() -> Path | None:
    """Where the announced topics are kept: the service's state folder, if it has one."""
    folders = os.environ.get("STATE_DIRECTORY", "")
    first = folders.split(":")[0]
    return Path(first) / ANNOUNCED_NAME if first else None


def read_announced(path: Path) -> list[str]:
    """The retained topics announced last time; none where the file is missing, damaged or not this module's."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_ANNOUNCED_BYTES + 1)
        topics = json.loads(data) if len(data) <= MAX_ANNOUNCED_BYTES else None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return []
    if not isinstance(topics, list):
        return []
    # never a wildcard: a damaged file must not clear what other devices keep
    return [t for t in topics if isinstance(t, str) and t and not any(c in t for c in "#+\0")]


def write_announced(path: Path, topics: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(topics), encoding="utf-8")
    os.replace(tmp, path)
