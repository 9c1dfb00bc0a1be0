"""The loop's counters and gauges in Prometheus' text exposition format (``GET /metrics``).

Integers are written whole and floats in their shortest exact form: a counter past a million frames keeps its
last digit. Also the process's own ``process_*`` metrics and ``fer_edge_build_info``.
"""

from __future__ import annotations

import math
import platform
from typing import Any

from fer_edge import __version__
from fer_edge.serve.procstats import process_stats

PROCESS_METRICS = {  # name -> (type, help)
    "cpu_seconds_total": ("counter", "User and system CPU time spent in seconds."),
    "resident_memory_bytes": ("gauge", "Resident memory size in bytes."),
    "virtual_memory_bytes": ("gauge", "Virtual memory size in bytes."),
    "open_fds": ("gauge", "Number of open file descriptors."),
    "max_fds": ("gauge", "Maximum number of open file descriptors."),
    "start_time_seconds": ("gauge", "Start time of the process since unix epoch in seconds."),
}


def sample_value(value: Any) -> str:
    """``value`` exactly: integers whole, floats in the shortest form that reads back the same."""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    number = float(value)
    if math.isnan(number):
        return "NaN"
    if math.isinf(number):
        return "+Inf" if number > 0 else "-Inf"
    return repr(number)


def _label_value(text: Any) -> str:
    return str(text).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def metrics_text(stats: dict[str, Any], extra: dict[str, tuple[str, str, Any]] | None = None) -> str:
    lines: list[str] = []

    def metric(
        name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], Any]], prefix: str = "fer_edge_"
    ) -> None:
        lines.append(f"# HELP {prefix}{name} {help_text}")
        lines.append(f"# TYPE {prefix}{name} {kind}")
        for labels, value in samples:
            if value is None:
                continue
            label_text = "{" + ",".join(f'{k}="{_label_value(v)}"' for k, v in labels.items()) + "}" if labels else ""
            lines.append(f"{prefix}{name}{label_text} {sample_value(value)}")

    build = {
        "version": __version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "model": stats.get("model") or "",
        "runtime": stats.get("runtime") or "",
    }
    metric("build_info", "gauge", "Always 1; the labels say what runs.", [(build, 1)])
    for name, value in process_stats().items():
        kind, help_text = PROCESS_METRICS[name]
        metric(name, kind, help_text, [({}, value)], prefix="process_")

    metric("frames_total", "counter", "Frames processed.", [({}, stats["frames"])])
    metric("frames_with_faces_total", "counter", "Frames with at least one face.", [({}, stats["frames_with_faces"])])
    metric("faces_total", "counter", "Faces classified, summed over frames.", [({}, stats["faces_total"])])
    metric("faces", "gauge", "Faces in the newest frame.", [({}, stats["faces"])])
    metric("fps", "gauge", "Frames per second over the last seconds.", [({}, stats["fps"])])
    metric(
        "stage_seconds_total",
        "counter",
        "Seconds spent in each stage of the loop.",
        [({"stage": name}, seconds) for name, seconds in stats.get("stage_seconds", {}).items()],
    )
    metric("uptime_seconds", "gauge", "Seconds since the live view started.", [({}, stats["uptime_s"])])
    metric("disk_free_bytes", "gauge", "Free space where recordings go.", [({}, stats["disk_free_bytes"])])
    metric("recording", "gauge", "1 while a recording segment is open.", [({}, int(stats["recording"]["active"]))])
    metric(
        "recording_segments", "gauge", "Finished recording segments on disk.", [({}, stats["recording"]["finished"])]
    )
    dropped = stats["recording"].get("dropped_frames", 0)
    metric("recording_dropped_frames_total", "counter", "Frames the recorder fell behind on.", [({}, dropped)])
    for name, on in stats.get("switches", {}).items():
        metric(f"switch_{name}", "gauge", f"1 while the {name} switch is on.", [({}, int(on))])
    mqtt = stats.get("mqtt")
    if mqtt:
        metric("mqtt_connected", "gauge", "1 while connected to the MQTT broker.", [({}, int(mqtt["connected"]))])
        metric("mqtt_reconnects_total", "counter", "Connections to the broker lost.", [({}, mqtt["disconnects"])])
        metric(
            "mqtt_messages_dropped_total",
            "counter",
            "Messages not handed to the broker (offline, queue full).",
            [({}, mqtt["dropped"])],
        )
    web = stats.get("web")
    if web:
        metric("web_connections", "gauge", "Live view connections open.", [({}, web["connections"])])
        metric("web_requests_total", "counter", "Complete requests handed to a worker.", [({}, web["requests"])])
        metric(
            "web_connections_closed_total",
            "counter",
            "Connections the server closed before a complete request, by reason.",
            [({"reason": reason}, web[reason]) for reason in ("refused", "evicted", "timed_out", "too_large")],
        )
    if mqtt:
        metric("mqtt_messages_ignored_total", "counter", "Messages from the broker ignored.", [({}, mqtt["ignored"])])
        metric(
            "mqtt_subscriptions_refused",
            "gauge",
            "Command topics the broker refused a subscription to on this connection (their commands never arrive).",
            [({}, len(mqtt.get("subscriptions_refused", {})))],
        )
        metric("mqtt_track_events_seen_total", "counter", "Track events the loop saw.", [({}, mqtt.get("events_seen"))])
        metric(
            "mqtt_track_events_sent_total",
            "counter",
            "Face events sent to Home Assistant (after the hold, label and cooldown rules).",
            [({}, mqtt.get("events_sent"))],
        )
    for name, (kind, help_text, value) in (extra or {}).items():
        metric(name, kind, help_text, [({}, value)])
    return "\n".join(lines) + "\n"
