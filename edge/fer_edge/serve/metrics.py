"""The loop's counters and gauges in Prometheus' text exposition format (``GET /metrics``)."""

from __future__ import annotations

from typing import Any


def metrics_text(stats: dict[str, Any], extra: dict[str, tuple[str, str, Any]] | None = None) -> str:
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], Any]]) -> None:
        lines.append(f"# HELP fer_edge_{name} {help_text}")
        lines.append(f"# TYPE fer_edge_{name} {kind}")
        for labels, value in samples:
            if value is None:
                continue
            label_text = "{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else ""
            lines.append(f"fer_edge_{name}{label_text} {float(value):g}")

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
    for name, (kind, help_text, value) in (extra or {}).items():
        metric(name, kind, help_text, [({}, value)])
    return "\n".join(lines) + "\n"
