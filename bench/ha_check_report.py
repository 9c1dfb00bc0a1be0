"""bench/results-ha.md and .json from one ``make ha-check`` run (bench/ha_check.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def write(result: dict[str, Any], out_md: Path, out_json: Path, args: argparse.Namespace) -> int:
    passed = all(row["passed"] for row in result["checks"])
    result["passed"] = passed
    out_json.write_text(json.dumps(result, indent=2) + "\n")
    userland = result.get("userland", {})
    userland_s, venv_s = args.setup_s.split(",")
    lines = [
        "## fer-edge against a real Home Assistant (`make ha-check`)",
        "",
        f"Home Assistant {result.get('ha_version', args.ha_version)} (pip, Python {userland.get('python', '?')}, "
        f"Debian {userland.get('debian', '?')} amd64 userland) with its MQTT integration added through the config "
        "flow, mosquitto on the host, and `fer-edge run` from this checkout on "
        f"`{Path(args.clip).name}` looped with `--realtime`, the live view on.",
        "",
        "| check | result | measured |",
        "|---|---|---|",
        *[
            f"| {row['check']} | {'PASS' if row['passed'] else 'FAIL'} | {_cell(row['figure'])} |"
            for row in result["checks"]
        ],
        "",
    ]
    for row in result["checks"]:
        if row["check"] == "entities" and row.get("entities"):
            lines += ["Entities: " + ", ".join(f"`{e}`" for e in row["entities"]) + ".", ""]
        if row["check"] == "calm events" and row.get("changes"):
            lines += [
                "State changes in the window: "
                + ", ".join(f"`{e}` {n}" for e, n in sorted(row["changes"].items()))
                + f"; event types sent: {_counts(row['event_types'])}.",
                "",
            ]
        if row["check"] == "Home Assistant's log" and (row.get("ours") or row.get("others")):
            lines += ["Warnings and errors in `home-assistant.log`:", "", "```"]
            lines += [line[:200] for line in (row.get("ours", []) + row.get("others", []))[:20]]
            lines += ["```", ""]
    lines += [
        f"Measured by `make ha-check` on {result['date'][:10]} on a {result['machine']} ("
        + (
            f"cold: debootstrap {userland_s} s, Home Assistant's venv {venv_s} s"
            if result["cold"]
            else "cached userland and venv"
        )
        + f", then {result['seconds']} s for the checks). Pre-installed: what the integrations Home Assistant sets up "
        "name in their manifests (and the login's MFA modules), so it installs nothing itself: "
        f"{', '.join(result.get('requirements', [])) or 'see the venv'}.",
        "",
    ]
    out_md.write_text("\n".join(lines))
    print("\n".join(lines))
    return 0 if passed else 1


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _counts(items: list[str]) -> str:
    return ", ".join(f"{name} {items.count(name)}" for name in sorted(set(items))) or "none"
