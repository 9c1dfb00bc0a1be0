#!/usr/bin/env bash
# Install or update fer-edge on a Raspberry Pi, as root:  sudo deploy/install.sh
#
# Idempotent: a second run with the same files changes nothing and leaves a running service alone.
#   apt: python3-picamera2 python3-numpy opencv-data python3-venv (+ setuptools, wheel, yaml)
#   /opt/fer-edge/venv            venv with --system-site-packages (NumPy and picamera2 from apt); on
#                                 64-bit Python 3.11 (Bookworm) every other package from requirements-pi.lock,
#                                 pip --require-hashes: every Pi gets the same versions
#   /var/lib/fer-edge/models      <sha256[:12]>/model.tflite + model.json, `current` -> the active one
#                                 (<sha256[:12]>-<sidecar's sha256[:8]>/ for the same model with another sidecar)
#   /var/lib/fer-edge/recordings  recordings and events.jsonl (kept by --uninstall)
#   /etc/fer-edge/config.yaml     written once, never overwritten (a newer template: config.yaml.new)
#   /etc/systemd/system/fer-edge.service (+ fer-edge.service.d/50-backoff.conf on systemd >= 254)
#   --instance NAME: /etc/fer-edge/NAME.yaml, fer-edge@.service, fer-edge.slice; runs fer-edge@NAME
#                    (one per camera; the plain fer-edge service is left as it is)
# An install that changes the packages, the units or the active model, which every instance shares, also
# restarts the other instances running now (fer-edge, fer-edge@*), each config checked first.
#
# Test seams: --prefix DIR installs under DIR instead of /; apt-get, systemctl, useradd, usermod,
# groupadd, getent and chown are looked up on PATH, so a test puts logging stubs first. With --prefix,
# the script refuses to start while any of them is the real one (it would change this machine, not DIR).
set -euo pipefail

SERVICE=fer-edge
SERVICE_USER=fer-edge
ROOT=/
SRC="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON=/usr/bin/python3
MODEL=
MODE=install
USE_APT=1
USERLAND=0
INSTANCE=
CAMERA=
WEB_PORT=
DEVICE_ID=
MANAGED_CONFIG=
FORCE_RESTART=0
LEAVE=" "         # --leave: instances the caller installs itself next
PACKAGES_CHANGED=0
OTHERS=()         # the other running instances this install restarts (check_others)
RESTARTED=()      # those restarted so far
OWN_LEFT_STOPPED=0  # a model swap left this install's own unit stopped (neither running nor enabled)
CREDENTIALS=()    # --credential NAME=FILE
CREDENTIALS_ADDED=()  # credentials this install made; those it replaced are kept in $WORK/credentials.previous
CREDENTIALS_CHANGED=0
KEEP_MODELS=3
BACKOFF_MIN_SYSTEMD=254

usage() {
    cat <<EOF
usage: sudo $0 [options]
  --src DIR        the staged release: edge/, requirements-edge.txt, models/, systemd/, deploy/ (default: $SRC)
  --model FILE     the .tflite to install, its .json beside it (default: SRC/models/fer_int8.tflite)
  --model-only     only install --model as the active model (atomic swap), check, restart
  --restart        restart the service even when nothing changed
  --no-apt         do not install the apt packages (they are already there, or managed elsewhere)
  --python FILE    the system Python the venv is built on (default: $PYTHON)
  --userland       a userland without systemd as PID 1 and without the Raspberry Pi archive (make pi-check):
                   no python3-picamera2, units installed but not started
  --instance NAME  set up the camera instance NAME (letters, digits, -, _): /etc/fer-edge/NAME.yaml from the
                   template (written once), recordings in /var/lib/fer-edge/NAME, unit fer-edge@NAME
  --camera DEV     with --instance: source.device (USB index, /dev/v4l/by-id/ path or stream URL; default:
                   the template's)
  --web-port N     with --instance: the live view on 127.0.0.1:N (web.enabled)
  --device-id ID   with --instance: mqtt.device_id (default: HOSTNAME-NAME)
  --config FILE    install FILE as the config (config.yaml, or NAME.yaml with --instance), replacing the one
                   there: for a config managed elsewhere (deploy/ansible); still checked before any restart,
                   and the one there put back when the check or the start fails
  --credential NAME=FILE
                   install FILE as the systemd credential NAME (web-token or mqtt-password; deploy.sh
                   --web-token-file, --mqtt-password-file): /etc/fer-edge/credentials/NAME (0600 root), loaded
                   by the plain service and every camera instance; repeatable
  --leave NAME     an upgrade restarts the other running instances too, each config checked first: not NAME
                   (config: the plain service), which the caller installs next (deploy/ansible); repeatable
  --prefix DIR     install under DIR instead of / (tests; system commands must be stubs on PATH)
  --uninstall      remove what install added; keeps recordings, the fer-edge user and an edited config
                   (with --instance NAME: stop and disable that camera's fer-edge@NAME alone)
EOF
}

say() { printf 'fer-edge install: %s\n' "$*" >&2; }
die() { printf 'fer-edge install: error: %s\n' "$*" >&2; exit 1; }
# need OPTION WHAT VALUE: the option was given its value (${2:?} would name this script's line, not the option)
need() { [ -n "$3" ] || die "$1 needs $2"; }

while [ $# -gt 0 ]; do
    case "$1" in
        --src) need "$1" "a folder" "${2:-}"; [ -d "$2" ] || die "--src: $2 is not a folder"
            SRC="$(cd "$2" && pwd)"; shift 2 ;;
        --model) need "$1" "a file" "${2:-}"; MODEL="$2"; shift 2 ;;
        --model-only) MODE=model; shift ;;
        --restart) FORCE_RESTART=1; shift ;;
        --no-apt) USE_APT=0; shift ;;
        --python) need "$1" "a file" "${2:-}"; PYTHON="$2"; shift 2 ;;
        --userland) USERLAND=1; shift ;;
        --instance) need "$1" "a name" "${2:-}"; INSTANCE="$2"; shift 2 ;;
        --camera) need "$1" "a device" "${2:-}"; CAMERA="$2"; shift 2 ;;
        --web-port) need "$1" "a number" "${2:-}"; WEB_PORT="$2"; shift 2 ;;
        --device-id) need "$1" "a name" "${2:-}"; DEVICE_ID="$2"; shift 2 ;;
        --config) need "$1" "a file" "${2:-}"; [ -f "$2" ] || die "--config: $2 is not a file"
            MANAGED_CONFIG="$(realpath "$2")"; shift 2 ;;
        --leave) need "$1" "a name" "${2:-}"; LEAVE+="$2 "; shift 2 ;;
        --credential) need "$1" "NAME=FILE" "${2:-}"; CREDENTIALS+=("$2"); shift 2 ;;
        --prefix) need "$1" "a folder" "${2:-}"; ROOT="$2"; shift 2 ;;
        --uninstall) MODE=uninstall; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

ROOT="${ROOT%/}"  # "" for /, so "$ROOT/opt" is "/opt"
if [ -n "$INSTANCE" ]; then
    case "$INSTANCE" in
        *[!A-Za-z0-9_-]*|-*|config|models|recordings|credentials) die "--instance $INSTANCE: use letters, digits, - and _" \
            "(not config, models, recordings or credentials)" ;;
    esac
    case "$WEB_PORT" in ""|[1-9]|[1-9][0-9]|[1-9][0-9][0-9]|[1-9][0-9][0-9][0-9]|[1-9][0-9][0-9][0-9][0-9]) ;;
        *) die "--web-port $WEB_PORT: a port number 1-65535" ;; esac
    [ -z "$WEB_PORT" ] || [ "$WEB_PORT" -le 65535 ] || die "--web-port $WEB_PORT: a port number 1-65535"
elif [ -n "$CAMERA$WEB_PORT$DEVICE_ID" ]; then
    die "--camera, --web-port and --device-id set up an instance: add --instance NAME"
fi
for credential in ${CREDENTIALS[@]+"${CREDENTIALS[@]}"}; do
    case "${credential%%=*}" in web-token|mqtt-password) ;;
        *) die "--credential ${credential%%=*}: web-token or mqtt-password" ;; esac
    [ -f "${credential#*=}" ] && [ -r "${credential#*=}" ] \
        || die "--credential ${credential%%=*}: ${credential#*=} is not a readable file"
done
OPT="$ROOT/opt/fer-edge"
VENV="$OPT/venv"
ETC="$ROOT/etc/fer-edge"
CONFIG="$ETC/${INSTANCE:-config}.yaml"
RUN_UNIT="$SERVICE${INSTANCE:+@$INSTANCE}"  # what is started: the plain service or one camera's instance
STATE="$ROOT/var/lib/fer-edge"
MODELS="$STATE/models"
RECORDINGS="$STATE/recordings"
UNIT_DIR="$ROOT/etc/systemd/system"
UNIT="$UNIT_DIR/$SERVICE.service"
DROPIN_DIR="$UNIT_DIR/$SERVICE.service.d"
DROPIN="$DROPIN_DIR/50-backoff.conf"
STAMP="$OPT/.python-packages.sha256"
VENV_PREVIOUS="$OPT/venv.previous"  # the venv an upgrade replaces, until the service runs with the new one
TEMPLATE_UNIT="$UNIT_DIR/$SERVICE@.service"
SLICE_UNIT="$UNIT_DIR/$SERVICE.slice"
TEMPLATE_DROPIN="$UNIT_DIR/$SERVICE@.service.d/50-backoff.conf"
# the lock's platform: 64-bit ARM, CPython 3.11 (Raspberry Pi OS Bookworm), NumPy held at apt's 1.24.2
LOCK_PLATFORM="aarch64 3.11"
MODEL="${MODEL:-$SRC/models/fer_int8.tflite}"
CHANGED=0
VENV_SAVED=0
CONFIG_PREVIOUS=
WORK="$(mktemp -d)"
# Any failure after pip touched the venv or --config replaced the config (pip itself, check-config, a unit
# file) puts the previous ones back: the running service, and its next start after a crash or a reboot, keep
# the release and the config they ran with.
trap 'if [ "$?" != 0 ]; then restore_venv || true; restore_config || true; restore_credentials || true; fi; rm -rf "$WORK"' EXIT

# --- system commands (the seams) ---------------------------------------------------------------

# The commands that change the system; a test puts logging stubs for them first on PATH.
SYSTEM_COMMANDS=(apt-get systemctl useradd usermod groupadd getent chown)

# With --prefix, refuse up front, before anything is written, if a system command is the real one:
# it would change this machine instead of the folder.
check_seams() {
    [ -n "$ROOT" ] || return 0
    local command path
    for command in "${SYSTEM_COMMANDS[@]}"; do
        path="$(command -v "$command")" || continue
        case "$path" in
            /bin/*|/sbin/*|/usr/bin/*|/usr/sbin/*|/usr/local/bin/*|/usr/local/sbin/*)
                die "--prefix $ROOT would run the real $path: put a stub for $command first on PATH" ;;
        esac
    done
}

as_root_check() {
    if [ -z "$ROOT" ] && [ "$(id -u)" -ne 0 ]; then
        die "run as root: sudo $0"
    fi
}

# One install at a time, in every mode: two would pip into the same venv, and a model copy that a power cut
# or a kill cut off (models/.incoming.*) is known to be abandoned only while no other install is writing one.
# In /opt/fer-edge, which only root can write: a lock file in a folder the service can write could be a link.
take_lock() {
    local lock="$OPT/.install.lock"
    mkdir -p "$OPT"
    exec 9>>"$lock"
    flock -n 9 || die "another install is running on this Pi (it holds ${lock#"$ROOT"}): install again once it is done"
}

# --- small helpers -----------------------------------------------------------------------------

# install_file SRC DEST MODE: copy when the content differs, through a temporary name (atomic).
install_file() {
    local src="$1" dest="$2" mode="$3"
    if [ -f "$dest" ] && cmp -s "$src" "$dest"; then
        return 0
    fi
    mkdir -p "$(dirname "$dest")"
    install -m "$mode" "$src" "$dest.tmp.$$"
    mv -f "$dest.tmp.$$" "$dest"
    CHANGED=1
    say "installed ${dest#"$ROOT"}"
}

# make_dir DIR MODE [OWNER]. Never through a symbolic link: the service can write /var/lib/fer-edge, so a
# link there (to /etc, say) would make this root script hand that folder to the service user.
make_dir() {
    local dir="$1" mode="$2" owner="${3:-}"
    if [ -L "$dir" ]; then
        die "${dir#"$ROOT"} is a symbolic link (to $(readlink "$dir")), not a folder: refusing to change its" \
            "owner or mode as root; remove the link and install again"
    fi
    if [ ! -d "$dir" ]; then
        mkdir -p "$dir"
        CHANGED=1
    fi
    chmod "$mode" "$dir"
    if [ -n "$owner" ]; then
        chown -h "$owner" "$dir"  # -h: should a link appear after the check, change the link, not its target
    fi
}

json_sha256() {  # the "sha256" of a model sidecar
    "$PYTHON" -c 'import json, sys; print(json.load(open(sys.argv[1]))["sha256"])' "$1" 2>/dev/null \
        || die "$1: not a model sidecar with a sha256"
}

file_sha256() { sha256sum "$1" | cut -d' ' -f1; }

systemd_version() { systemctl --version | awk 'NR == 1 { print $2 }'; }

service_active() { systemctl is-active --quiet "$RUN_UNIT"; }

# --- steps -------------------------------------------------------------------------------------

# No python3-opencv: 162 packages (~448 MB on a Lite image) for OpenCV 4.6, below the 4.8 the package
# needs; the headless wheel in the lock (4.11, the last built for NumPy 1.x) replaces it. opencv-data
# stays: the Haar cascades for detector.kind haar.
apt_packages() {
    local packages=(python3-numpy opencv-data python3-venv python3-setuptools python3-wheel python3-yaml)
    if [ "$USERLAND" = 0 ]; then
        packages=(python3-picamera2 "${packages[@]}")  # only in the Raspberry Pi archive
    fi
    if [ "$USE_APT" = 0 ]; then
        say "skipping apt (--no-apt): needs ${packages[*]}"
        return 0
    fi
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends "${packages[@]}"; then
        say "apt-get install failed; updating the package lists and retrying"
        apt-get update
        apt-get install -y --no-install-recommends "${packages[@]}"
    fi
}

service_user() {
    if ! getent group render >/dev/null; then
        groupadd --system render  # SupplementaryGroups= of the unit fails the start without it
    fi
    if ! getent passwd "$SERVICE_USER" >/dev/null; then
        useradd --system --user-group --groups video --home-dir /var/lib/fer-edge --no-create-home \
            --shell /usr/sbin/nologin --comment "fer-edge service" "$SERVICE_USER"
        CHANGED=1
        say "created system user $SERVICE_USER (groups: video)"
    elif ! getent group video | cut -d: -f4 | tr ',' '\n' | grep -qx "$SERVICE_USER"; then
        usermod --append --groups video "$SERVICE_USER"
        CHANGED=1
    fi
}

# The pip requirements where there is no lock for this Python: requirements-edge.txt, with the TFLite
# runtime that has a wheel for it.
pi_requirements() {
    local bits version runtime
    read -r bits version < <("$VENV/bin/python" -c \
        'import struct, sys; print(struct.calcsize("P") * 8, "%d.%d" % sys.version_info[:2])')
    if [ "$bits" != 64 ]; then
        # docs/DEPLOY.md: no OpenCV, NumPy or LiteRT wheels for 32-bit ARM on PyPI, apt's OpenCV is 4.6
        die "32-bit Python is not supported (no OpenCV, NumPy or LiteRT wheels for it): install the 64-bit" \
            "Raspberry Pi OS"
    elif version_ge "$version" 3.10; then
        runtime=ai-edge-litert
    elif version_ge 3.11 "$version"; then
        runtime=tflite-runtime  # Python < 3.10: LiteRT has no wheel, tflite-runtime ends at 3.11
    else
        die "no TFLite runtime wheel for $bits-bit Python $version: install the 64-bit Raspberry Pi OS"
    fi
    local line name
    while IFS= read -r line || [ -n "$line" ]; do
        line="${line%%#*}"
        line="$(echo "$line" | xargs)"
        [ -n "$line" ] || continue
        name="$(echo "$line" | sed -E 's/[ <>=!~;\[].*//' | tr 'A-Z_' 'a-z-')"
        case "$name" in
            tensorflow|tensorflow-*|tflite-runtime) continue ;;
            ai-edge-litert) [ "$runtime" = ai-edge-litert ] || continue ;;
        esac
        echo "$line"
    done < "$SRC/requirements-edge.txt"
    if [ "$runtime" = tflite-runtime ]; then
        echo "tflite-runtime"
    elif ! grep -qiE '^[[:space:]]*ai[-_]edge[-_]litert' "$SRC/requirements-edge.txt"; then
        echo "ai-edge-litert"
    fi
}

version_ge() { [ "$(printf '%s\n%s\n' "$1" "$2" | sort -V | head -n 1)" = "$2" ]; }

# NumPy stays at the system's version: picamera2 is built against it; OpenCV wheels from 4.12 on need
# NumPy 2.
pi_constraints() {
    local numpy
    if numpy="$("$PYTHON" -c 'import numpy; print(numpy.__version__)' 2>/dev/null)"; then
        echo "numpy==$numpy"
    else
        echo "numpy<2"  # tflite-runtime crashes under NumPy 2
        numpy=1
    fi
    if ! version_ge "$numpy" 2; then
        echo "opencv-python-headless<4.12"
    fi
}

# The lock when this Python is its platform; else nothing (requirements-edge.txt is resolved on the day).
pi_lock() {
    local platform
    platform="$("$VENV/bin/python" -c 'import platform, sys; print(platform.machine(), "%d.%d" % sys.version_info[:2])')"
    if [ -f "$SRC/requirements-pi.lock" ] && [ "$platform" = "$LOCK_PLATFORM" ]; then
        echo "$SRC/requirements-pi.lock"
    fi
}

python_env() {
    [ -f "$SRC/requirements-edge.txt" ] || die "$SRC/requirements-edge.txt missing from the release"
    [ -f "$SRC/edge/pyproject.toml" ] || die "$SRC/edge (the fer-edge package) missing from the release"
    if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys' 2>/dev/null; then
        say "the venv's Python is gone (OS upgrade?): rebuilding $VENV"
        rm -rf "$VENV"
    fi
    if [ ! -x "$VENV/bin/python" ]; then
        mkdir -p "$OPT"
        "$PYTHON" -m venv --system-site-packages "$VENV"
        CHANGED=1
        say "created ${VENV#"$ROOT"} (--system-site-packages)"
    fi
    local work="$WORK/python" lock
    mkdir "$work"
    lock="$(pi_lock)"
    if [ -n "$lock" ]; then
        cp "$lock" "$work/requirements-pi.txt"
        : > "$work/constraints.txt"
    else
        pi_requirements > "$work/requirements-pi.txt"
        pi_constraints > "$work/constraints.txt"
    fi
    # The package is built from a copy: pip's in-tree build would leave build/ and egg-info in SRC.
    mkdir "$work/src"
    (cd "$SRC" && tar --exclude=__pycache__ --exclude='*.egg-info' --exclude=build -cf - edge) | tar -xf - -C "$work/src"
    local stamp
    stamp="$(cd "$work" && { "$VENV/bin/python" -VV; cat requirements-pi.txt constraints.txt;
        find src -type f | LC_ALL=C sort | xargs sha256sum; } | sha256sum | cut -d' ' -f1)"
    if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$stamp" ]; then
        say "python packages unchanged"
        return 0
    fi
    save_venv
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    if [ -n "$lock" ]; then
        say "pip: ${lock#"$SRC/"} (--require-hashes; NumPy $("$VENV/bin/python" -c 'import numpy; print(numpy.__version__)' \
            2>/dev/null || echo 'from the lock'))"
        "$VENV/bin/python" -m pip install --quiet --require-hashes --only-binary=:all: -r "$work/requirements-pi.txt" \
            || pip_failed "${lock#"$SRC/"}"
        # the package's own dependency (PyYAML) is in the lock: nothing unpinned comes in with it
        "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation "$work/src/edge" || pip_failed fer-edge
    else
        say "no lock for $("$VENV/bin/python" -c 'import platform, sys; print(platform.machine(), sys.version.split()[0])'):" \
            "pip resolves requirements-edge.txt today: $(paste -sd ' ' "$work/requirements-pi.txt"), constraints:" \
            "$(paste -sd ' ' "$work/constraints.txt")"
        "$VENV/bin/python" -m pip install --quiet -r "$work/requirements-pi.txt" -c "$work/constraints.txt" \
            || pip_failed requirements-edge.txt
        # No build isolation: setuptools/wheel come from apt, so a release installs without PyPI.
        "$VENV/bin/python" -m pip install --quiet --no-build-isolation -c "$work/constraints.txt" "$work/src/edge" \
            || pip_failed fer-edge
    fi
    install -m 0644 "$work/requirements-pi.txt" "$OPT/requirements-pi.txt"
    install -m 0644 "$work/constraints.txt" "$OPT/constraints.txt"
    echo "$stamp" > "$STAMP"
    CHANGED=1
    PACKAGES_CHANGED=1
}

# pip_failed WHAT: one line after pip's own; the EXIT trap then puts the previous venv back.
pip_failed() {
    die "pip could not install $1 (its error above: no network, or a wheel that does not match its hash?):" \
        "service not (re)started"
}

# save_venv: before pip changes a venv that a service runs, copy it aside (the copy works in place again:
# its scripts name /opt/fer-edge/venv, where restore_venv puts it back).
save_venv() {
    [ -f "$STAMP" ] && [ -x "$VENV/bin/fer-edge" ] || return 0  # a first install: nothing runs yet
    rm -rf "$VENV_PREVIOUS" "$VENV_PREVIOUS.tmp"
    if ! cp -a "$VENV" "$VENV_PREVIOUS.tmp"; then
        rm -rf "$VENV_PREVIOUS.tmp"
        die "could not copy ${VENV#"$ROOT"} aside before upgrading it (disk full?): nothing changed"
    fi
    cp -p "$STAMP" "$VENV_PREVIOUS.tmp/.python-packages.sha256"
    mv -T "$VENV_PREVIOUS.tmp" "$VENV_PREVIOUS"
    VENV_SAVED=1
}

# restore_venv: put back the venv save_venv kept; fails when there is none.
restore_venv() {
    [ "$VENV_SAVED" = 1 ] || return 1
    VENV_SAVED=0
    rm -rf "$VENV.failed"
    mv -T "$VENV" "$VENV.failed"
    mv -T "$VENV_PREVIOUS" "$VENV"
    mv -f "$VENV/.python-packages.sha256" "$STAMP"
    rm -rf "$VENV.failed"
    say "put back the previous fer-edge and Python packages in ${VENV#"$ROOT"}"
}

# drop_saved_venv: the service runs with the new venv; the previous one is not needed any more.
drop_saved_venv() {
    [ "$VENV_SAVED" = 1 ] || return 0
    VENV_SAVED=0
    rm -rf "$VENV_PREVIOUS"
}

# install_model FILE: copy FILE and its sidecar to models/<sha[:12]>/ under a temporary name, verify
# the copy against the sidecar, rename it into place, then switch `current` with one atomic rename.
MODEL_SWITCHED_FROM=
# model_pair_present MODEL: the model and its sidecar are there. A full install asks first, before apt and pip
# (minutes on a Pi), so a mistyped --model is not found only once the venv is built.
model_pair_present() {
    [ -f "$1" ] || die "model not found: $1"
    [ -f "${1%.tflite}.json" ] || die "model sidecar not found: ${1%.tflite}.json"
}

install_model() {
    local model="$1" sidecar="${1%.tflite}.json"
    model_pair_present "$model"
    local want version
    want="$(json_sha256 "$sidecar")"
    [ "$(file_sha256 "$model")" = "$want" ] || die "$model does not match the sha256 in $(basename "$sidecar")"
    version="${want:0:12}"
    if [ -d "$MODELS/$version" ] && ! cmp -s "$sidecar" "$MODELS/$version/model.json"; then
        # the same model with another sidecar (labels, face margin, calibration): its own folder, or the
        # service would go on with the sidecar installed before
        version="$version-$(file_sha256 "$sidecar" | cut -c1-8)"
    fi
    make_dir "$MODELS" 0755
    prune_incoming
    if [ ! -d "$MODELS/$version" ]; then
        local incoming
        incoming="$(mktemp -d "$MODELS/.incoming.XXXXXX")"
        install -m 0644 "$model" "$incoming/model.tflite"
        install -m 0644 "$sidecar" "$incoming/model.json"
        [ "$(file_sha256 "$incoming/model.tflite")" = "$want" ] || die "copy of $model is corrupt (disk full?)"
        chmod 0755 "$incoming"
        sync
        mv -T "$incoming" "$MODELS/$version"
        CHANGED=1
    fi
    local current
    current="$(readlink "$MODELS/current" 2>/dev/null || true)"
    if [ "$current" != "$version" ]; then
        # pruning keeps the newest folders: a model made active again counts from now, not from its first copy
        touch "$MODELS/$version"
        ln -sfn "$version" "$MODELS/.current.tmp"
        mv -T "$MODELS/.current.tmp" "$MODELS/current"
        sync
        MODEL_SWITCHED_FROM="${current:-none}"
        CHANGED=1
        say "active model: $version (was ${current:-none})"
    fi
}

# prune_incoming: remove the model copies an install left unfinished (a power cut, a kill, a full disk): they
# are never renamed into place. Under the install lock, so none of them is being written now.
prune_incoming() {
    local dir
    while IFS= read -r dir; do
        rm -rf "$dir"
        say "removed ${dir#"$ROOT"}: a model copy an earlier install did not finish"
    done < <(find "$MODELS" -mindepth 1 -maxdepth 1 -name '.incoming.*' -print)
}

# prune_models: keep KEEP_MODELS versions in all: always the active one and the one it replaced (the
# rollback target, however old), then the others last made active most recently (a folder's time). Called only once the service runs
# with the active one, so a failed start can always roll back.
prune_models() {
    local current dir kept=0 protected=" "
    current="$(readlink "$MODELS/current" 2>/dev/null || true)"
    for dir in "$current" "$MODEL_SWITCHED_FROM"; do
        if [ -n "$dir" ] && [ "$dir" != none ] && [ -d "$MODELS/$dir" ]; then
            protected+="$dir "
            kept=$((kept + 1))
        fi
    done
    while IFS= read -r dir; do
        dir="$(basename "$dir")"
        case "$protected" in *" $dir "*) continue ;; esac
        if [ "$kept" -lt "$KEEP_MODELS" ]; then
            kept=$((kept + 1))
            continue
        fi
        rm -rf "${MODELS:?}/$dir"
        say "removed old model $dir"
    done < <(find "$MODELS" -mindepth 1 -maxdepth 1 -type d ! -name '.*' -printf '%T@ %p\n' | sort -rn | cut -d' ' -f2-)
}

rollback_model() {
    [ -n "$MODEL_SWITCHED_FROM" ] && [ "$MODEL_SWITCHED_FROM" != none ] || return 0
    ln -sfn "$MODEL_SWITCHED_FROM" "$MODELS/.current.tmp"
    mv -T "$MODELS/.current.tmp" "$MODELS/current"
    say "rolled back to model $MODEL_SWITCHED_FROM"
}

# start_failed WHAT [UNIT]: systemd could not start UNIT (default: this install's service); put back what
# this install switched (the model, the packages, the config) and restart every service it restarted, so
# that they run what is installed again. Never returns.
start_failed() {
    local unit="${2:-$RUN_UNIT}" restored= again
    if [ -n "$MODEL_SWITCHED_FROM" ] && [ "$MODEL_SWITCHED_FROM" != none ]; then
        rollback_model
        restored="previous model restored"
    fi
    if restore_venv; then
        restored="${restored:+$restored, }previous packages restored"
    fi
    if restore_config; then
        restored="${restored:+$restored, }previous config restored"
    fi
    if restore_credentials; then
        restored="${restored:+$restored, }previous credentials restored"
    fi
    if [ -n "$restored" ]; then
        for again in "$RUN_UNIT" ${RESTARTED[@]+"${RESTARTED[@]}"}; do
            [ "$again" != "$RUN_UNIT" ] || [ "$OWN_LEFT_STOPPED" = 0 ] || continue
            systemctl restart "$again" || true
        done
        die "$unit did not start$1 (journalctl -u $unit): $restored"
    fi
    die "$unit did not start$1 (journalctl -u $unit)"
}

# The config may hold a camera URL with its password: readable by root and the service's group only.
config_file() {
    local template="$SRC/deploy/config.yaml"
    install_file "$template" "$OPT/config.yaml.dist" 0644
    if [ -n "$MANAGED_CONFIG" ]; then
        if [ -f "$CONFIG" ] && ! cmp -s "$MANAGED_CONFIG" "$CONFIG"; then
            cp -p "$CONFIG" "$WORK/config.previous"
            CONFIG_PREVIOUS="$WORK/config.previous"
        fi
        install_file "$MANAGED_CONFIG" "$CONFIG" 0640
    elif [ -n "$INSTANCE" ]; then
        instance_config "$template"
    elif [ ! -f "$CONFIG" ]; then
        install_file "$template" "$CONFIG" 0640
    elif cmp -s "$template" "$CONFIG"; then
        rm -f "$CONFIG.new"
    elif [ ! -f "$CONFIG.new" ] || ! cmp -s "$template" "$CONFIG.new"; then
        install -m 0640 "$template" "$CONFIG.new"
        say "kept your ${CONFIG#"$ROOT"}; the new template is ${CONFIG#"$ROOT"}.new: compare and merge by hand"
    fi
    chmod 0640 "$CONFIG"  # also one an earlier install left world-readable
    chown "root:$SERVICE_USER" "$CONFIG"
}

# restore_config: put back the config --config replaced; fails when it replaced none.
restore_config() {
    [ -n "$CONFIG_PREVIOUS" ] || return 1
    mv -f "$CONFIG_PREVIOUS" "$CONFIG.tmp.$$"
    mv -f "$CONFIG.tmp.$$" "$CONFIG"
    CONFIG_PREVIOUS=
    say "put back the previous ${CONFIG#"$ROOT"}"
}

# install_credentials: each --credential NAME=FILE as /etc/fer-edge/credentials/NAME (0600 root, the folder
# 0700), with a drop-in for the plain service and one for the camera instances that loads it
# (LoadCredential=): systemd hands it to the service alone, and check_config shows check-config the same files.
install_credentials() {
    [ "${#CREDENTIALS[@]}" -gt 0 ] || return 0
    local credential name file unit dropin dropins_changed=0
    make_dir "$ETC/credentials" 0700
    mkdir -p "$WORK/credentials.previous"
    for credential in "${CREDENTIALS[@]}"; do
        name="${credential%%=*}" file="${credential#*=}"
        if [ ! -f "$ETC/credentials/$name" ]; then
            CREDENTIALS_ADDED+=("$name")
            CREDENTIALS_CHANGED=1
        elif ! cmp -s "$file" "$ETC/credentials/$name"; then
            cp -p "$ETC/credentials/$name" "$WORK/credentials.previous/$name"
            CREDENTIALS_CHANGED=1
        fi
        install_file "$file" "$ETC/credentials/$name" 0600
        printf '[Service]\nLoadCredential=%s:/etc/fer-edge/credentials/%s\n' "$name" "$name" > "$WORK/dropin"
        for unit in "$SERVICE.service" "$SERVICE@.service"; do
            dropin="$(credential_dropin "$unit" "$name")"
            cmp -s "$WORK/dropin" "$dropin" || dropins_changed=1
            install_file "$WORK/dropin" "$dropin" 0644
        done
    done
    if [ "$dropins_changed" = 1 ] && [ "$USERLAND" = 0 ]; then
        systemctl daemon-reload  # a model swap restarts without the reload a full install makes
    fi
}

# credential_dropin UNIT NAME: the drop-in that makes UNIT (the plain service, or the instances' template)
# load credential NAME.
credential_dropin() {
    echo "$UNIT_DIR/$1.d/60-credential-$2.conf"
}

# restore_credentials: the install failed: the credentials it replaced are put back, the ones it added
# removed; non-zero when there was none.
restore_credentials() {
    local previous name restored=1
    for previous in "$WORK"/credentials.previous/*; do
        [ -f "$previous" ] || continue
        mv -f "$previous" "$ETC/credentials/$(basename "$previous")"
        restored=0
    done
    for name in ${CREDENTIALS_ADDED[@]+"${CREDENTIALS_ADDED[@]}"}; do
        rm -f "$ETC/credentials/$name" "$(credential_dropin "$SERVICE.service" "$name")" \
            "$(credential_dropin "$SERVICE@.service" "$name")"
        restored=0
    done
    CREDENTIALS_ADDED=()
    if [ "$restored" = 0 ]; then
        [ "$USERLAND" = 1 ] || systemctl daemon-reload || true
        say "put back the credentials this install changed"
    fi
    return "$restored"
}

# instance_config TEMPLATE: /etc/fer-edge/NAME.yaml from the template, written once (never overwritten):
# its own recording folder (the unit lets it write there only), camera, web port and MQTT device id.
instance_config() {
    [ -f "$CONFIG" ] && { say "kept your ${CONFIG#"$ROOT"}"; return 0; }
    local device_id="${DEVICE_ID:-$(hostname)-$INSTANCE}"
    "$VENV/bin/python" - "$1" "$CONFIG.tmp.$$" "$INSTANCE" "$CAMERA" "$WEB_PORT" "$device_id" <<'PYTHON' \
        || die "could not write ${CONFIG#"$ROOT"} from $1"
import json, re, sys
template, out, instance, camera, port, device_id = sys.argv[1:]
settings = {("recording", "output_dir"): f"/var/lib/fer-edge/{instance}", ("mqtt", "device_id"): device_id}
if camera:  # kind auto would take the Pi camera wherever picamera2 is installed, whatever the device says
    settings["source", "kind"] = "opencv"
    settings["source", "device"] = camera
if port:
    settings["web", "enabled"] = True
    settings["web", "listen"] = f"127.0.0.1:{port}"
lines, section, done = [], None, set()
for line in open(template, encoding="utf-8"):
    top = re.match(r"^(\w+):", line)
    section = top.group(1) if top else section
    key = re.match(r"^  (\w+):(\s*)(\S.*?)?(\s+#.*)?$", line.rstrip("\n"))
    if key and (section, key.group(1)) in settings:
        value = json.dumps(settings[section, key.group(1)])
        line = f"  {key.group(1)}: {value}{key.group(4) or ''}\n"
        done.add((section, key.group(1)))
    lines.append(line)
missing = set(settings) - done
if missing:
    sys.exit(f"not in the template: {sorted('.'.join(k) for k in missing)}")
open(out, "w", encoding="utf-8").writelines(lines)
PYTHON
    chmod 0640 "$CONFIG.tmp.$$"
    mv -f "$CONFIG.tmp.$$" "$CONFIG"
    CHANGED=1
    say "installed ${CONFIG#"$ROOT"} (camera ${CAMERA:-of the template}, device id $device_id${WEB_PORT:+, web port $WEB_PORT})"
}

unit_files() {
    install_file "$SRC/systemd/$SERVICE.service" "$UNIT" 0644
    if [ -f "$SRC/systemd/$SERVICE@.service" ]; then
        install_file "$SRC/systemd/$SERVICE@.service" "$TEMPLATE_UNIT" 0644
        install_file "$SRC/systemd/$SERVICE.slice" "$SLICE_UNIT" 0644
    fi
    local dropin
    for dropin in "$DROPIN" "$TEMPLATE_DROPIN"; do  # the plain service and every camera instance
        if version_ge "$(systemd_version)" "$BACKOFF_MIN_SYSTEMD"; then
            install_file "$SRC/systemd/$SERVICE-backoff.conf" "$dropin" 0644
        elif [ -e "$dropin" ]; then
            rm -f "$dropin"
            rmdir "$(dirname "$dropin")" 2>/dev/null || true
            CHANGED=1
        fi
    done
    if [ -f "$SRC/docs/DEPLOY.md" ]; then
        install_file "$SRC/docs/DEPLOY.md" "$OPT/DEPLOY.md" 0644
    fi
}

# check_config [CONFIG UNIT]: this install's config, or the config of UNIT, another instance running now.
check_config() {
    local config="${1:-$CONFIG}" unit="${2:-}"
    # The service reads its secrets from systemd credentials (deploy.sh --web-token-file, --mqtt-password-file),
    # which systemd names to the service alone: check-config is shown the same files, or a live view listening
    # on the network would look tokenless here and every later install would stop.
    local credentials=()
    if [ -z "${CREDENTIALS_DIRECTORY:-}" ] && [ -d "$ETC/credentials" ]; then
        credentials=("CREDENTIALS_DIRECTORY=$ETC/credentials")
    fi
    # under --prefix the config's model path is outside the scratch root: only a missing model is let pass
    if ! env ${credentials[@]+"${credentials[@]}"} \
        "$VENV/bin/fer-edge" check-config ${ROOT:+--model-optional} --config "$config" >/dev/null; then
        rollback_model  # else the service's next start (a crash, the watchdog, a reboot) takes the new model
        if [ -n "$unit" ]; then
            die "${config#"$ROOT"} of the running $unit does not pass fer-edge check-config of this release:" \
                "nothing (re)started"
        fi
        die "${config#"$ROOT"} does not pass fer-edge check-config: service not (re)started"
    fi
    say "config ok: ${config#"$ROOT"}"
}

# shared_change: this install changes what every instance on the Pi runs: the packages, the active model,
# a credential, the plain unit or the template of the camera instances.
shared_change() {
    if [ "$PACKAGES_CHANGED" = 1 ] || [ -n "$MODEL_SWITCHED_FROM" ] || [ "$CREDENTIALS_CHANGED" = 1 ]; then
        return 0
    fi
    [ "$MODE" = install ] || return 1
    ! cmp -s "$SRC/systemd/$SERVICE.service" "$UNIT" || { [ -f "$SRC/systemd/$SERVICE@.service" ] \
        && ! cmp -s "$SRC/systemd/$SERVICE@.service" "$TEMPLATE_UNIT"; }
}

# check_others: a running instance keeps the old code and model in memory until it restarts, and its next
# start (a crash, a reboot) loads the new ones unchecked. So when this install changes what they share, the
# other instances running now are restarted too (restart_others), and each one's config is checked against
# this release first, before anything restarts: a config the release refuses stops the install as this
# install's own config would, instead of taking that camera down.
check_others() {
    [ "$USERLAND" = 0 ] && shared_change || return 0
    local config name unit
    for config in "$ETC"/*.yaml; do
        [ -f "$config" ] || continue
        name="$(basename "$config" .yaml)"
        case "$name" in *[!A-Za-z0-9_-]*|-*) continue ;; esac
        case "$LEAVE" in *" $name "*) continue ;; esac
        if [ "$name" = config ]; then unit="$SERVICE"; else unit="$SERVICE@$name"; fi
        [ "$unit" != "$RUN_UNIT" ] && systemctl is-active --quiet "$unit" || continue
        check_config "$config" "$unit"
        OTHERS+=("$unit")
    done
}

# restart_others WHAT: once this install's own service runs the new release, the instances check_others
# found, one at a time; one that does not start puts the previous release back (start_failed).
restart_others() {
    [ "${#OTHERS[@]}" -gt 0 ] || return 0
    say "restarting the other running instances on the new release too: ${OTHERS[*]}"
    local unit
    for unit in "${OTHERS[@]}"; do
        RESTARTED+=("$unit")
        systemctl restart "$unit" || start_failed "$1" "$unit"
    done
}

# Start, or restart when something changed; systemctl waits for READY=1 (Type=notify).
# Returns non-zero when systemd could not start it (callers run it under `if`, where set -e is off).
start_service() {
    if [ "$USERLAND" = 1 ]; then
        systemctl enable --quiet "$RUN_UNIT" || return 1  # offline: the [Install] links only
        say "no systemd as PID 1 (--userland): $RUN_UNIT enabled, not started"
        return 0
    fi
    systemctl daemon-reload || return 1
    systemctl enable --quiet "$RUN_UNIT" || return 1
    if ! service_active; then
        say "starting $RUN_UNIT"
        systemctl start "$RUN_UNIT" || return 1
    elif [ "$CHANGED" = 1 ] || [ "$FORCE_RESTART" = 1 ]; then
        say "restarting $RUN_UNIT"
        systemctl restart "$RUN_UNIT" || return 1
    else
        say "nothing changed; $RUN_UNIT keeps running"
    fi
}

do_install() {
    model_pair_present "$MODEL"
    apt_packages
    service_user
    make_dir "$OPT" 0755
    make_dir "$STATE" 0750 "$SERVICE_USER:$SERVICE_USER"
    make_dir "$RECORDINGS" 0750 "$SERVICE_USER:$SERVICE_USER"
    make_dir "$ETC" 0755
    python_env
    install_model "$MODEL"
    config_file
    install_credentials
    check_config  # before the units: a refused release leaves the installed units as they were
    check_others
    unit_files
    start_service || start_failed ""
    restart_others ""
    drop_saved_venv
    prune_models  # only now that the service runs with the new model
}

do_model_only() {
    [ -x "$VENV/bin/fer-edge" ] || die "fer-edge is not installed here: run a full install first"
    if ! grep -q "/var/lib/fer-edge/models/current/model.tflite" "$CONFIG"; then
        say "warning: model.path in ${CONFIG#"$ROOT"} is not /var/lib/fer-edge/models/current/model.tflite:" \
            "the service will not use the model swapped in here"
    fi
    install_model "$MODEL"
    install_credentials
    check_config
    check_others
    if [ "$CHANGED" = 0 ] && [ "$FORCE_RESTART" = 0 ]; then
        say "model already active; nothing to do"
        return 0
    fi
    if systemctl is-active --quiet "$RUN_UNIT" || systemctl is-enabled --quiet "$RUN_UNIT"; then
        say "restarting $RUN_UNIT with the new model"
        systemctl restart "$RUN_UNIT" || start_failed " with the new model"
    else  # e.g. the plain service, disabled where camera instances run: starting it would take their camera
        say "$RUN_UNIT is neither running nor enabled: left stopped"
        OWN_LEFT_STOPPED=1
    fi
    restart_others " with the new model"
    prune_models  # only now that the service runs with the new model: the rollback target was kept
}

# --uninstall --instance NAME: that camera alone; the plain service, the other cameras and the venv stay.
do_uninstall_instance() {
    systemctl disable --now --quiet "$RUN_UNIT" || true
    say "stopped and disabled $RUN_UNIT; kept ${CONFIG#"$ROOT"} and /var/lib/fer-edge/$INSTANCE (remove them by hand)"
}

do_uninstall() {
    if [ -n "$INSTANCE" ]; then
        do_uninstall_instance
        return 0
    fi
    if [ -e "$UNIT" ]; then
        systemctl disable --now --quiet "$SERVICE" || true
    fi
    local instance
    for instance in "$ETC"/*.yaml; do  # the camera instances (their configs are kept)
        instance="$(basename "$instance" .yaml)"
        if [ "$instance" = config ] || [ ! -e "$TEMPLATE_UNIT" ]; then continue; fi
        systemctl disable --now --quiet "$SERVICE@$instance" || true
    done
    rm -f "$UNIT" "$DROPIN" "$TEMPLATE_UNIT" "$TEMPLATE_DROPIN" "$SLICE_UNIT"
    rmdir "$DROPIN_DIR" "$(dirname "$TEMPLATE_DROPIN")" 2>/dev/null || true
    systemctl daemon-reload
    if [ -f "$CONFIG" ] && [ -f "$OPT/config.yaml.dist" ] && cmp -s "$CONFIG" "$OPT/config.yaml.dist"; then
        rm -f "$CONFIG"
    elif [ -f "$CONFIG" ]; then
        say "kept your edited ${CONFIG#"$ROOT"}"
    fi
    rm -f "$CONFIG.new"
    rmdir "$ETC" 2>/dev/null || true
    rm -rf "$OPT" "$MODELS"
    say "removed the service, ${OPT#"$ROOT"} and the models; kept ${RECORDINGS#"$ROOT"}, the user $SERVICE_USER" \
        "(owner of the recordings) and the apt packages"
    if [ -d "$ETC/credentials" ]; then
        say "kept the secrets in /etc/fer-edge/credentials and the drop-ins that load them" \
            "(/etc/systemd/system/$SERVICE.service.d, $SERVICE@.service.d): a new install uses them again"
    fi
    say "to remove everything: sudo rm -rf /var/lib/fer-edge /etc/fer-edge /etc/systemd/system/$SERVICE.service.d" \
        "/etc/systemd/system/$SERVICE@.service.d && sudo userdel $SERVICE_USER"
}

as_root_check
check_seams
take_lock
case "$MODE" in
    install) do_install ;;
    model) do_model_only ;;
    uninstall) do_uninstall ;;
esac
