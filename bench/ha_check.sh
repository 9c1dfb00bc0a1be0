#!/usr/bin/env bash
# make ha-check: fer-edge against a real Home Assistant, from the repository, as root.
#
# Home Assistant releases with MQTT device discovery need Python >= 3.12 (2025.5 on: >= 3.13.2; 2026.3 on:
# >= 3.14.2), newer than this machine's, so it runs in a Debian trixie amd64 userland (Python 3.13; debootstrap,
# cached in /var/cache/fer-edge-ha, native speed, the host's network) with HA_VERSION from PyPI in a venv there,
# together with what its MQTT, recorder and history integrations import (read from their manifests), so Home
# Assistant installs nothing at run time. bench/ha_check.py then runs, on the host: mosquitto on a free loopback
# port, Home Assistant in the userland with a fresh config folder, onboarding and the MQTT integration through its
# REST API, `fer-edge run` on a shared clip (camera-paced) pointed at the broker, and the checks. Writes
# bench/results-ha.md and bench/results-ha.json.
#
#   HA_FRESH=1            rebuild the userland and the venv first
#   HA_SECONDS=60         how long the calm check watches the events
#   HA_KEEP=1             keep the work folder (home-assistant.log, fer-edge.log, the configs) when all pass
#   HA_USERLAND=/var/cache/fer-edge-ha/trixie-amd64
#   bench/ha_check.sh --inside CMD ARGS...   run a command in the userland (HA_BIND="host:guest[:ro] ..." binds;
#                                            its own mount namespace: the mounts vanish when it ends)
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
# The newest release whose Requires-Python admits trixie's 3.13 (2026.3.0 and later need >= 3.14.2).
HA_VERSION="${HA_VERSION:-2026.2.3}"
USERLAND="${HA_USERLAND:-/var/cache/fer-edge-ha/trixie-amd64}"
MIRROR="${HA_MIRROR:-http://deb.debian.org/debian}"
CLIP="${HA_CLIP:-$(realpath -m "$REPO/../shared/clips/performer-640x360.mp4")}"
HOST_PYTHON="${HA_HOST_PYTHON:-$REPO/.venv-edge/bin/python}"  # runs fer-edge and the driver: needs paho-mqtt
VENV=/opt/ha/venv
# What configuration.yaml and the checks load (bench/ha_check.py), isal (without it aiohttp warns at start), and what
# onboarding's core_config step sets up (homeassistant/components/onboarding/views.py): their manifests, and those
# of what they depend on or provide a platform for, name what to pre-install.
INTEGRATIONS="mqtt history recorder image event sensor binary_sensor switch isal"
ONBOARDING="google_translate met radio_browser shopping_list"

die() { printf 'ha-check: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'ha-check: %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, mounts): sudo make ha-check"

bind_args() {
    BIND_ARGS=()
    for bind in ${HA_BIND:-}; do
        BIND_ARGS+=(--bind "$bind")
    done
}
inside() { bind_args; tools/userland_run.sh "$USERLAND" "${BIND_ARGS[@]}" -- "$@"; }

if [ "${1:-}" = --inside ]; then
    shift
    [ -f "$USERLAND/.complete" ] || die "no userland at $USERLAND: run bench/ha_check.sh first"
    bind_args
    exec tools/userland_run.sh "$USERLAND" "${BIND_ARGS[@]}" -- "$@"  # a signal to the command reaches it
fi

[ -f "$CLIP" ] || die "clip not found: $CLIP (HA_CLIP=FILE, or ../shared/clips beside the checkout)"
[ -x "$HOST_PYTHON" ] || die "no Python with fer-edge at $HOST_PYTHON: make demo builds .venv-edge (or HA_HOST_PYTHON=...)"
"$HOST_PYTHON" -c 'import paho.mqtt' 2>/dev/null || die "$HOST_PYTHON has no paho-mqtt: pip install -r requirements-edge.txt"
MOSQUITTO="$(command -v mosquitto || echo /usr/sbin/mosquitto)"
[ -x "$MOSQUITTO" ] || die "mosquitto missing: apt-get install mosquitto"
command -v debootstrap >/dev/null || [ -f "$USERLAND/.complete" ] || die "debootstrap missing: apt-get install debootstrap"

start_all=$SECONDS
if [ "${HA_FRESH:-0}" = 1 ]; then
    say "HA_FRESH=1: removing the cached userland $USERLAND"
    rm -rf "$USERLAND"
fi
cold=0
if [ ! -f "$USERLAND/.complete" ]; then
    cold=1
    rm -rf "$USERLAND"
    mkdir -p "$USERLAND"
    say "debootstrap trixie amd64 into $USERLAND (a few minutes)"
    # gcc and python3-dev: lru-dict, pinned by Home Assistant, has no wheel for 3.13 and is built; ffmpeg: the tts
    # integration that onboarding sets up depends on Home Assistant's ffmpeg one, which logs an error without it
    debootstrap --variant=minbase --include=python3,python3-venv,python3-dev,gcc,libc6-dev,ca-certificates,ffmpeg trixie "$USERLAND" "$MIRROR" \
        > "$USERLAND.debootstrap.log" 2>&1 || die "debootstrap failed: see $USERLAND.debootstrap.log"
    touch "$USERLAND/.complete"
fi
userland_s=$((SECONDS - start_all))

marker="$USERLAND$VENV/.installed-$HA_VERSION"
if [ ! -f "$marker" ]; then
    cold=1
    say "pip install homeassistant==$HA_VERSION into $VENV (several minutes)"
    inside bash -c "rm -rf $VENV && python3 -m venv $VENV && $VENV/bin/pip install -q --upgrade pip \
        && $VENV/bin/pip install -q homeassistant==$HA_VERSION" > "$USERLAND.pip.log" 2>&1 \
        || { tail -n 30 "$USERLAND.pip.log" >&2; die "pip install homeassistant==$HA_VERSION failed (above)"; }
    # Each integration's manifest names the packages Home Assistant would pip install when it first loads it.
    # shellcheck disable=SC2086  # word lists
    inside "$VENV/bin/python" - $INTEGRATIONS $ONBOARDING > "$USERLAND$VENV/requirements-integrations.txt" <<'PYTHON' \
        || die "reading the integrations' manifests failed"
import json, sys
from pathlib import Path
import homeassistant.components as components
from homeassistant.auth.mfa_modules import notify, totp
from homeassistant.bootstrap import CORE_INTEGRATIONS, DEFAULT_INTEGRATIONS
from homeassistant.const import Platform
from homeassistant.requirements import DISCOVERY_INTEGRATIONS
# as homeassistant/requirements.py walks them: dependencies, after_dependencies and the discovery integrations a
# manifest names (zeroconf, usb, ...), from what is set up by default and what the configuration adds; and the
# integrations whose platforms one provides (google_translate/tts.py imports tts, which needs mutagen)
root = Path(components.__path__[0])
platforms = {platform.value for platform in Platform}
todo, seen = [*CORE_INTEGRATIONS, *DEFAULT_INTEGRATIONS, *sys.argv[1:]], set()
requirements = {*totp.REQUIREMENTS, *notify.REQUIREMENTS}  # the login's MFA modules, loaded at start
while todo:
    name = todo.pop()
    if name in seen:
        continue
    seen.add(name)
    manifest = json.loads((root / name / "manifest.json").read_text())
    requirements.update(manifest.get("requirements", []))
    todo.extend(manifest.get("dependencies", []) + manifest.get("after_dependencies", []))
    todo.extend(domain for domain, keys in DISCOVERY_INTEGRATIONS.items() if any(key in manifest for key in keys))
    todo.extend(f.stem for f in (root / name).glob("*.py") if f.stem in platforms)
print("\n".join(sorted(requirements)))
PYTHON
    say "pre-installing what the integrations need: $(tr '\n' ' ' < "$USERLAND$VENV/requirements-integrations.txt")"
    inside bash -c "$VENV/bin/pip install -q -r $VENV/requirements-integrations.txt \
            -c \$($VENV/bin/python -c 'import homeassistant, os; print(os.path.dirname(homeassistant.__file__))')/package_constraints.txt" \
            >> "$USERLAND.pip.log" 2>&1 \
        || { tail -n 30 "$USERLAND.pip.log" >&2; die "pip install of the integrations' requirements failed (above)"; }
    touch "$marker"
fi
venv_s=$((SECONDS - start_all - userland_s))
say "userland $([ $cold = 1 ] && echo built || echo cached): $((SECONDS - start_all)) s"

exec "$HOST_PYTHON" -m bench.ha_check --userland "$USERLAND" --venv "$VENV" --ha-version "$HA_VERSION" \
    --clip "$CLIP" --mosquitto "$MOSQUITTO" --seconds "${HA_SECONDS:-60}" --cold "$cold" \
    --setup-s "$userland_s,$venv_s" --integrations "$INTEGRATIONS"
