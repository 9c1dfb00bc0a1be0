"""The driver of ``make ha-check`` (bench/ha_check.sh prepares the userland and starts this, as root).

On the host: mosquitto on a free loopback port; Home Assistant in the trixie userland with a fresh config folder,
onboarded and given the MQTT integration through its REST API; ``fer-edge run`` from this checkout on a clip paced
like a camera, pointed at the broker, with the live view on. Then the checks, each printed PASS or FAIL with what
was measured, and bench/results-ha.md and .json. Everything it starts is stopped when it ends, whatever happens;
its work folder (logs, configs, the recording) is removed unless a check failed or HA_KEEP=1.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.ha_check_api import (
    DEVICE,
    POLL_S,
    UID,
    USERLAND_FACTS,
    Checks,
    HomeAssistant,
    Listener,
    Run,
    iso,
    lines,
    machine,
    max_pixel,
    ms,
    run_inside,
    say,
    stop,
    wait_until,
)
from bench.ha_check_report import write

REPO = Path(__file__).resolve().parent.parent
PROBLEM = re.compile(r"\b(WARNING|ERROR|CRITICAL)\b")
OURS = re.compile(r"mqtt|fer.edge|discovery", re.IGNORECASE)
BLANK_MAX_PIXEL = 16  # a JPEG of zeros decodes to a few grey levels at most


def entities_check(
    ha: HomeAssistant, listener: Listener, checks: Checks, started: float, live_view: str
) -> dict[str, str]:
    """Every component of the discovery message is an entity of one device, with what it was given."""
    discovery_topic = f"homeassistant/device/{UID}/config"
    wait_until("the discovery message", lambda: listener.messages(discovery_topic), 60, 0.1)
    discovery = json.loads(listener.messages(discovery_topic)[-1][1])
    device_name = discovery["dev"]["name"]
    wanted = {key: c for key, c in discovery["cmps"].items() if set(c) != {"p"}}
    removed = [key for key, c in discovery["cmps"].items() if set(c) == {"p"}]

    def found() -> dict[str, dict] | None:
        states = ha.states()
        by_name = {(s["entity_id"].split(".")[0], s["attributes"].get("friendly_name")): s for s in states.values()}
        got = {key: by_name.get((c["p"], f"{device_name} {c['name']}")) for key, c in wanted.items()}
        return {key: state for key, state in got.items() if state is not None} if all(got.values()) else None

    try:
        got = wait_until("the entities", found, 60, 0.1)
    except TimeoutError:
        got = {}
    seconds = time.time() - started
    ids = {key: s["entity_id"] for key, s in (got or {}).items()}
    mqtt_entities = ha.template("{{ integration_entities('mqtt') | list | tojson }}")
    device = (
        ha.template(
            "{% set d = device_id(" + json.dumps(next(iter(ids.values()), "")) + ") %}"
            "{{ {'name': device_attr(d, 'name'), 'model': device_attr(d, 'model'),"
            " 'sw_version': device_attr(d, 'sw_version'), 'configuration_url': device_attr(d, 'configuration_url'),"
            " 'entities': device_entities(d)} | tojson }}"
        )
        if ids
        else {}
    )
    mismatches = []
    for key, state in (got or {}).items():
        for option in ("device_class", "unit_of_measurement", "state_class", "options", "icon", "event_types"):
            if option in wanted[key] and state["attributes"].get(option) != wanted[key][option]:
                mismatches.append(f"{state['entity_id']} {option}={state['attributes'].get(option)!r}")
    leftovers = [e for e in mqtt_entities if e.startswith("camera.")]
    ok = (
        len(ids) == len(wanted)
        and sorted(device.get("entities", [])) == sorted(mqtt_entities) == sorted(ids.values())
        and device.get("name") == device_name
        and device.get("configuration_url") == live_view
        and not mismatches
        and not leftovers
    )
    checks.add(
        "entities",
        ok,
        f"{len(ids)} of {len(wanted)} components are entities of the device {device.get('name')!r} "
        f"({len(mqtt_entities)} MQTT entities in all, {ms(seconds)} ms after fer-edge started; "
        f"{len(mismatches)} attributes differ; configuration_url {device.get('configuration_url')}; the removed "
        f"camera {'left over' if leftovers else 'absent'})",
        entities=sorted(ids.values()),
        device=device,
        mismatches=mismatches,
        removed=removed,
    )
    return ids


def switch_check(
    ha: HomeAssistant,
    listener: Listener,
    checks: Checks,
    ids: dict[str, str],
    name: str,
    order: tuple[bool, bool],
    extra: Callable[[bool, float], None] | None = None,
) -> None:
    """Each turn through Home Assistant's service, timed until Home Assistant shows fer-edge's new state."""
    entity = ids[f"{UID}_{name}"]
    topic = f"fer-edge/{DEVICE}/{name}/state"
    times: list[int | None] = []
    confirmed: list[bool] = []
    for on in order:
        target = "on" if on else "off"
        t0 = time.time()
        ha.switch(entity, on)
        try:
            wait_until(f"{entity} {target}", lambda target=target: ha.state(entity)["state"] == target, 10)
            times.append(ms(time.time() - t0))
        except TimeoutError:
            times.append(None)
        try:  # this listener may get the state a moment after Home Assistant did
            wait_until("the state", lambda t0=t0, want=target.upper().encode(): want in listener.payloads(topic, t0), 2)
            confirmed.append(True)
        except TimeoutError:
            confirmed.append(False)
        if extra is not None:
            extra(on, t0)
    ok = all(t is not None for t in times) and all(confirmed)
    checks.add(
        f"switch {name}",
        ok,
        " then ".join(f"{'on' if on else 'off'} {t} ms" for on, t in zip(order, times))
        + f" (service call to Home Assistant's new state; fer-edge published each state: {all(confirmed)})",
        round_trip_ms=times,
    )


def privacy_check(ha: HomeAssistant, listener: Listener, checks: Checks, ids: dict[str, str]) -> None:
    """Privacy on in Home Assistant replaces the face its image entity shows with fer-edge's blank."""
    image = ids[f"{UID}_last_face"]
    topic = f"fer-edge/{DEVICE}/snapshot"
    wait_until("a snapshot of a face", lambda: listener.messages(topic), 60, 0.1)
    face = listener.messages(topic)[-1][1]
    wait_until("the face in Home Assistant", lambda: ha.image(image) == face, 10, 0.05)
    seen: dict[str, Any] = {"face_bytes": len(face)}

    def cleared(on: bool, t0: float) -> None:
        if not on:
            return
        try:
            wait_until("the blank image", lambda: ha.image(image) not in (face, b""), 10, POLL_S)
            seen["cleared_ms"] = ms(time.time() - t0)
        except TimeoutError:
            seen["cleared_ms"] = None
        try:  # as for the switch states: this listener may be a moment behind Home Assistant
            published = wait_until("the blank", lambda: listener.payloads(topic, t0), 2)
        except TimeoutError:
            published = []
        got = ha.image(image)
        seen["same_bytes"] = bool(published) and got == published[-1]
        seen["blank_max_pixel"] = max_pixel(got)

    switch_check(ha, listener, checks, ids, "privacy", (True, False), cleared)
    brightest = seen.get("blank_max_pixel")
    checks.add(
        "privacy clears the image",
        seen.get("cleared_ms") is not None
        and seen["same_bytes"]
        and brightest is not None
        and brightest <= BLANK_MAX_PIXEL,
        f"the face ({len(face)} bytes) from /api/image_proxy was replaced {seen.get('cleared_ms')} ms after the "
        f"service call by fer-edge's blank (the bytes it published: {seen.get('same_bytes')}; brightest pixel "
        f"{brightest})",
        **seen,
    )


def recording_check(ha: HomeAssistant, listener: Listener, checks: Checks, ids: dict[str, str]) -> None:
    """Recording off and on in Home Assistant; fer-edge's Recording video sensor follows."""
    active = ids[f"{UID}_recording_active"]
    followed: dict[str, int | None] = {}

    def writing(on: bool, t0: float) -> None:
        target = "on" if on else "off"
        try:
            wait_until("Recording video", lambda: ha.state(active)["state"] == target, 15, 0.02)
            followed[f"video_{target}_ms"] = ms(time.time() - t0)
        except TimeoutError:
            followed[f"video_{target}_ms"] = None

    switch_check(ha, listener, checks, ids, "recording", (False, True), writing)
    checks.add(
        "recording follows",
        len(followed) == 2 and all(v is not None for v in followed.values()),
        f"{active} off {followed.get('video_off_ms')} ms, on {followed.get('video_on_ms')} ms after the service call",
        **followed,
    )


def calm_check(
    ha: HomeAssistant, listener: Listener, checks: Checks, ids: dict[str, str], start: float, end: float, web: int
) -> None:
    """Every event fer-edge sent in the window is its own state of the event entity, at a calm rate; beside
    the rate, how many raw track events fer-edge saw for those it sent (since its start, from /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{web}/metrics", timeout=10) as response:
        metrics = dict(line.split()[:2] for line in response.read().decode().splitlines() if line.startswith("fer_"))
    seen_sent = [metrics.get(f"fer_edge_mqtt_track_events_{kind}_total") for kind in ("seen", "sent")]
    event_entity = ids[f"{UID}_face_event"]
    sent = [(t, json.loads(p)) for t, p in listener.messages(f"fer-edge/{DEVICE}/event", start) if t <= end]
    query = urllib.parse.urlencode(
        {
            "end_time": iso(end + 2),
            "filter_entity_id": ",".join(ids.values()),
            "significant_changes_only": "0",
        }
    )
    history = ha.request("GET", f"/api/history/period/{urllib.parse.quote(iso(start))}?{query}")
    changes: dict[str, list[dict]] = {series[0]["entity_id"]: series[1:] for series in history if series}
    shown = [
        (datetime.datetime.fromisoformat(s["state"]).timestamp(), s["attributes"].get("event_type"))
        for s in changes.get(event_entity, [])
        if s["state"] not in ("unknown", "unavailable")
    ]
    unmatched, wrong_type = [], []
    for t, payload in sent:  # each sent event: the state Home Assistant made of it, within a second
        match = next((state for state in shown if abs(state[0] - t) < 1.0), None)
        if match is None:
            unmatched.append(payload)
            continue
        shown.remove(match)
        if match[1] != payload["event_type"]:
            wrong_type.append(payload)
    gaps = [b - a for (a, _), (b, _) in zip(sent, sent[1:])]
    seconds = end - start
    per_entity = {entity: len(series) for entity, series in changes.items()}
    checks.add(
        "calm events",
        len(sent) > 0 and not unmatched and not wrong_type,
        f"{len(sent)} events in {seconds:.0f} s ({len(sent) / seconds:.2f}/s, closest two {min(gaps, default=0):.2f} s "
        f"apart), {len(unmatched)} of them collapsed or lost in {event_entity}, {len(wrong_type)} with another "
        f"event_type; {sum(per_entity.values())} state changes of the device's entities in all; since its start "
        f"fer-edge saw {seen_sent[0]} raw track events and sent {seen_sent[1]}",
        events=len(sent),
        event_types=[p["event_type"] for _, p in sent],
        unmatched=unmatched,
        wrong_type=wrong_type,
        per_second=round(len(sent) / seconds, 3),
        changes=per_entity,
        seconds=round(seconds, 1),
        track_events_seen_sent=seen_sent,
    )


def availability_check(run: Run, checks: Checks, ids: dict[str, str]) -> None:
    """SIGKILL fer-edge; the broker's last will makes every entity unavailable."""
    t0 = time.time()
    stop(run.processes["fer-edge"], signal.SIGKILL)
    entities = set(ids.values())
    try:
        wait_until(
            "unavailable",
            lambda: all(s["state"] == "unavailable" for e, s in run.ha.states().items() if e in entities),
            30,
            0.02,
        )
        gone: int | None = ms(time.time() - t0)
    except TimeoutError:
        gone = None
    checks.add(
        "availability",
        gone is not None and gone < 5000,
        f"all {len(entities)} entities unavailable {gone} ms after SIGKILL (the last will)",
        ms=gone,
    )


def restart_check(run: Run, listener: Listener, checks: Checks, ids: dict[str, str]) -> None:
    """Home Assistant restarts; fer-edge hears its birth message and sends the discovery again, the entities
    come back and a new event reaches the event entity."""
    stop(run.processes["hass"])
    t0 = time.time()
    up_s = run.start_home_assistant()

    def after(topic: str, since: float, payload: bytes | None = None) -> list[float]:
        return [t for t, got in listener.messages(topic, since) if payload is None or got == payload]

    entities = set(ids.values())
    try:
        birth = wait_until("the birth message", lambda: after("homeassistant/status", t0, b"online"), 60)[0]
        resent = wait_until("the discovery again", lambda: after(f"homeassistant/device/{UID}/config", birth), 10)[0]
        wait_until(
            "the entities back",
            lambda: all(run.ha.states().get(e, {}).get("state", "unavailable") != "unavailable" for e in entities),
            60,
            0.1,
        )
        back = time.time()
        event = wait_until("an event", lambda: after(f"fer-edge/{DEVICE}/event", back), 60, 0.1)[0]
    except TimeoutError as exc:
        checks.add("Home Assistant restart", False, str(exc))
        return
    event_entity = ids[f"{UID}_face_event"]
    try:
        wait_until("the event shown", lambda: abs(_event_time(run.ha.state(event_entity)) - event) < 1.0, 5, 0.05)
        event_ok = True
    except TimeoutError:
        event_ok = False
    checks.add(
        "Home Assistant restart",
        event_ok,
        f"API up {up_s:.0f} s after the start, discovery sent again {ms(resent - birth)} ms after the birth message, "
        f"all {len(entities)} entities available {back - t0:.1f} s after the restart, the next event shown: {event_ok}",
        discovery_ms=ms(resent - birth),
        back_s=round(back - t0, 1),
    )


def _event_time(state: dict) -> float:
    """When an event entity's newest event came, or -inf before any."""
    try:
        return datetime.datetime.fromisoformat(state["state"]).timestamp()
    except ValueError:  # unknown, unavailable
        return float("-inf")


def log_check(work: Path, checks: Checks) -> None:
    """Home Assistant's log and fer-edge's, for what concerns MQTT and the discovery."""
    log = work / "config/home-assistant.log"
    # a restart moves the log of the first start to home-assistant.log.1
    problems = [line for path in (log.with_suffix(".log.1"), log) for line in lines(path) if PROBLEM.search(line)]
    ours = [line for line in problems if OURS.search(line)]
    ours += [f"fer-edge: {line}" for line in lines(work / "fer-edge.log") if PROBLEM.search(line) and "mqtt" in line]
    checks.add(
        "logs",
        log.exists() and not ours,
        f"{len(ours)} warnings or errors about MQTT, fer-edge or discovery in home-assistant.log and fer-edge's log "
        f"({len(problems)} of any kind in home-assistant.log, both starts)",
        ours=ours,
        others=[line for line in problems if line not in ours],
    )


def main() -> int:
    parser = argparse.ArgumentParser()
    for option in ("--userland", "--venv", "--ha-version", "--clip", "--mosquitto", "--setup-s", "--integrations"):
        parser.add_argument(option, required=True)
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--cold", default="0")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # `timeout` or a kill: stop what was started first
    work = Path(tempfile.mkdtemp(prefix="ha-check."))
    checks = Checks()
    result: dict[str, Any] = {"date": iso(time.time())[:19] + "Z", "machine": machine()}
    started = time.time()
    run = Run(args, work)
    freeze = ""
    try:
        result["userland"] = json.loads(run_inside(f"{args.venv}/bin/python", "-c", USERLAND_FACTS))
        freeze = run_inside(f"{args.venv}/bin/pip", "freeze")
        listener = run.start_broker()
        ha_start_s = run.start_home_assistant()
        run.ha.onboard()
        result["ha_version"] = run.ha.request("GET", "/api/config")["version"]
        run.ha.add_mqtt(run.broker_port)
        wait_until("Home Assistant's birth message", lambda: b"online" in listener.payloads("homeassistant/status"), 60)
        say(f"Home Assistant {result['ha_version']} answered {ha_start_s:.0f} s after its start; MQTT added")
        ids = entities_check(run.ha, listener, checks, run.start_fer_edge(), f"http://127.0.0.1:{run.web_port}/")
        if not ids:
            raise RuntimeError("no entities: the other checks need them")
        window = time.time()  # the switching is part of the calm window: it must not make events collapse either
        privacy_check(run.ha, listener, checks, ids)
        recording_check(run.ha, listener, checks, ids)
        time.sleep(max(0.0, window + args.seconds - time.time()))
        end = time.time()
        time.sleep(2.5)  # the recorder commits every second
        calm_check(run.ha, listener, checks, ids, window, end, run.web_port)
        restart_check(run, listener, checks, ids)
        availability_check(run, checks, ids)
    except Exception as exc:  # noqa: BLE001 - a failed check like the others; everything is stopped below
        checks.add("run", False, f"{type(exc).__name__}: {exc}")
    finally:
        run.close()
    log_check(work, checks)
    if freeze:
        after = run_inside(f"{args.venv}/bin/pip", "freeze")
        changed = sorted(set(after.splitlines()) ^ set(freeze.splitlines()))
        checks.add(
            "nothing installed at run time",
            not changed,
            f"{len(after.splitlines())} packages in the venv, {len(changed)} changed while Home Assistant ran",
            changed=changed,
        )
    result["requirements"] = lines(Path(args.userland + args.venv) / "requirements-integrations.txt")
    result.update(checks=checks.rows, seconds=round(time.time() - started), cold=args.cold == "1")
    code = write(result, REPO / "bench/results-ha.md", REPO / "bench/results-ha.json", args)
    if code == 0 and os.environ.get("HA_KEEP") != "1":
        shutil.rmtree(work, ignore_errors=True)
    else:
        say(f"kept {work} (home-assistant.log, fer-edge.log, the configs)")
    return code


if __name__ == "__main__":
    sys.exit(main())
