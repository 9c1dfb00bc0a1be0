"""make ha-check: its recorded run covered every entity fer-edge announces now and passed, and bad input gets one
clear line (the run itself is `make ha-check`, by hand: it needs root, debootstrap and a few minutes)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from fer_edge.serve.homeassistant import Topics, discovery_payload

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results-ha.json"


def test_the_recorded_ha_check_saw_every_entity_fer_edge_announces_and_passed():
    result = json.loads(RESULTS.read_text())
    checks = {row["check"]: row for row in result["checks"]}
    components = discovery_payload(Topics("fer-edge", "hacheck", "homeassistant"), "hacheck", ["happy"], None)["cmps"]
    entities = [c for c in components.values() if set(c) != {"p"}]  # a platform alone removes a component
    announced = {f"{c['p']}.fer_edge_hacheck_{c['name'].lower().replace(' ', '_')}" for c in entities}
    # a component added since: run `sudo make ha-check` again, so Home Assistant has seen it
    assert set(checks["entities"]["entities"]) == announced
    assert checks["entities"]["mismatches"] == [] and checks["logs"]["ours"] == []
    assert result["userland"]["python"].startswith("3.13.") and result["passed"] is True


def test_ha_check_says_in_one_line_what_is_missing():
    result = subprocess.run(
        ["bench/ha_check.sh"],
        cwd=REPO,
        env={**os.environ, "HA_CLIP": "/nonexistent/clip.mp4"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    expected = "clip not found: /nonexistent/clip.mp4" if os.geteuid() == 0 else "needs root"
    assert len(lines) == 1 and lines[0].startswith("ha-check: error: ") and expected in lines[0], result.stderr
