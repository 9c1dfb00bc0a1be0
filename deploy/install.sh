#!/usr/bin/env bash
# Install or update fer-edge on a Raspberry Pi, as root:  sudo deploy/install.sh
#
# Idempotent: a second run with the same files changes nothing and leaves a running service alone.
#   apt: python3-picamera2 python3-opencv opencv-data python3-venv (+ setuptools, wheel, yaml)
#   /opt/fer-edge/venv            venv with --system-site-packages (OpenCV, NumPy, picamera2 from apt)
#   /var/lib/fer-edge/models      <sha256[:12]>/model.tflite + model.json, `current` -> the active one
#   /var/lib/fer-edge/recordings  recordings and events.jsonl (kept by --uninstall)
#   /etc/fer-edge/config.yaml     written once, never overwritten (a newer template: config.yaml.new)
#   /etc/systemd/system/fer-edge.service (+ fer-edge.service.d/50-backoff.conf on systemd >= 254)
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
FORCE_RESTART=0
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
  --prefix DIR     install under DIR instead of / (tests; system commands must be stubs on PATH)
  --uninstall      remove what install added; keeps recordings, the fer-edge user and an edited config
EOF
}

say() { printf 'fer-edge install: %s\n' "$*" >&2; }
die() { printf 'fer-edge install: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --src) SRC="$(cd "${2:?--src needs a folder}" && pwd)"; shift 2 ;;
        --model) MODEL="${2:?--model needs a file}"; shift 2 ;;
        --model-only) MODE=model; shift ;;
        --restart) FORCE_RESTART=1; shift ;;
        --no-apt) USE_APT=0; shift ;;
        --python) PYTHON="${2:?--python needs a file}"; shift 2 ;;
        --prefix) ROOT="${2:?--prefix needs a folder}"; shift 2 ;;
        --uninstall) MODE=uninstall; shift ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown option: $1" ;;
    esac
done

ROOT="${ROOT%/}"  # "" for /, so "$ROOT/opt" is "/opt"
OPT="$ROOT/opt/fer-edge"
VENV="$OPT/venv"
ETC="$ROOT/etc/fer-edge"
CONFIG="$ETC/config.yaml"
STATE="$ROOT/var/lib/fer-edge"
MODELS="$STATE/models"
RECORDINGS="$STATE/recordings"
UNIT_DIR="$ROOT/etc/systemd/system"
UNIT="$UNIT_DIR/$SERVICE.service"
DROPIN_DIR="$UNIT_DIR/$SERVICE.service.d"
DROPIN="$DROPIN_DIR/50-backoff.conf"
STAMP="$OPT/.python-packages.sha256"
MODEL="${MODEL:-$SRC/models/fer_int8.tflite}"
CHANGED=0
WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

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

service_active() { systemctl is-active --quiet "$SERVICE"; }

# --- steps -------------------------------------------------------------------------------------

apt_packages() {
    local packages=(python3-picamera2 python3-opencv opencv-data python3-venv python3-setuptools python3-wheel
        python3-yaml)
    if [ "$(python_bits)" = 32 ]; then
        packages+=(python3-av)  # PyPI has no 32-bit ARM wheels of PyAV
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

python_bits() { "$PYTHON" -c 'import struct; print(struct.calcsize("P") * 8)'; }

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

# The pip requirements for this Pi: requirements-edge.txt without OpenCV (apt's python3-opencv through
# --system-site-packages) and with the TFLite runtime that has a wheel for this Python.
pi_requirements() {
    local bits version runtime
    read -r bits version < <("$VENV/bin/python" -c \
        'import struct, sys; print(struct.calcsize("P") * 8, "%d.%d" % sys.version_info[:2])')
    if [ "$bits" = 64 ] && version_ge "$version" 3.10; then
        runtime=ai-edge-litert
    elif version_ge 3.11 "$version"; then
        runtime=tflite-runtime  # 32-bit, or Python < 3.10: LiteRT has no wheel, tflite-runtime ends at 3.11
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
            opencv-*|tensorflow|tensorflow-*|tflite-runtime) continue ;;
            ai-edge-litert) [ "$runtime" = ai-edge-litert ] || continue ;;
            av) [ "$bits" = 64 ] || continue ;;  # apt's python3-av on 32-bit
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

# NumPy stays at the system's version: apt's OpenCV and picamera2 are built against it.
pi_constraints() {
    local numpy
    if numpy="$("$PYTHON" -c 'import numpy; print(numpy.__version__)' 2>/dev/null)"; then
        echo "numpy==$numpy"
    else
        echo "numpy<2"  # tflite-runtime crashes under NumPy 2
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
    local work="$WORK/python"
    mkdir "$work"
    pi_requirements > "$work/requirements-pi.txt"
    pi_constraints > "$work/constraints.txt"
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
    say "pip: $(paste -sd ' ' "$work/requirements-pi.txt"), constraints: $(paste -sd ' ' "$work/constraints.txt")"
    export PIP_DISABLE_PIP_VERSION_CHECK=1
    "$VENV/bin/python" -m pip install --quiet -r "$work/requirements-pi.txt" -c "$work/constraints.txt"
    # No build isolation: setuptools/wheel come from apt, so a release installs without PyPI.
    "$VENV/bin/python" -m pip install --quiet --no-build-isolation -c "$work/constraints.txt" "$work/src/edge"
    install -m 0644 "$work/requirements-pi.txt" "$OPT/requirements-pi.txt"
    install -m 0644 "$work/constraints.txt" "$OPT/constraints.txt"
    echo "$stamp" > "$STAMP"
    CHANGED=1
}

# install_model FILE: copy FILE and its sidecar to models/<sha[:12]>/ under a temporary name, verify
# the copy against the sidecar, rename it into place, then switch `current` with one atomic rename.
MODEL_SWITCHED_FROM=
install_model() {
    local model="$1" sidecar="${1%.tflite}.json"
    [ -f "$model" ] || die "model not found: $model"
    [ -f "$sidecar" ] || die "model sidecar not found: $sidecar"
    local want version
    want="$(json_sha256 "$sidecar")"
    [ "$(file_sha256 "$model")" = "$want" ] || die "$model does not match the sha256 in $(basename "$sidecar")"
    version="${want:0:12}"
    make_dir "$MODELS" 0755
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
        ln -sfn "$version" "$MODELS/.current.tmp"
        mv -T "$MODELS/.current.tmp" "$MODELS/current"
        sync
        MODEL_SWITCHED_FROM="${current:-none}"
        CHANGED=1
        say "active model: $version (was ${current:-none})"
    fi
}

# prune_models: keep KEEP_MODELS versions in all: always the active one and the one it replaced (the
# rollback target, however old), then the newest of the others. Called only once the service runs
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

# start_failed WHAT: systemd could not start the service; if this install switched the model, switch
# back and restart with the previous one. Never returns.
start_failed() {
    if [ -n "$MODEL_SWITCHED_FROM" ] && [ "$MODEL_SWITCHED_FROM" != none ]; then
        rollback_model
        systemctl restart "$SERVICE" || true
        die "$SERVICE did not start$1 (journalctl -u $SERVICE): previous model restored"
    fi
    die "$SERVICE did not start$1 (journalctl -u $SERVICE)"
}

# The config may hold a camera URL with its password: readable by root and the service's group only.
config_file() {
    local template="$SRC/deploy/config.yaml"
    install_file "$template" "$OPT/config.yaml.dist" 0644
    if [ ! -f "$CONFIG" ]; then
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

unit_files() {
    install_file "$SRC/systemd/$SERVICE.service" "$UNIT" 0644
    if version_ge "$(systemd_version)" "$BACKOFF_MIN_SYSTEMD"; then
        install_file "$SRC/systemd/$SERVICE-backoff.conf" "$DROPIN" 0644
    elif [ -e "$DROPIN" ]; then
        rm -f "$DROPIN"
        rmdir "$DROPIN_DIR" 2>/dev/null || true
        CHANGED=1
    fi
    if [ -f "$SRC/docs/DEPLOY.md" ]; then
        install_file "$SRC/docs/DEPLOY.md" "$OPT/DEPLOY.md" 0644
    fi
}

check_config() {
    # under --prefix the config's model path is outside the scratch root: only a missing model is let pass
    if ! "$VENV/bin/fer-edge" check-config ${ROOT:+--model-optional} --config "$CONFIG" >/dev/null; then
        rollback_model  # else the service's next start (a crash, the watchdog, a reboot) takes the new model
        die "${CONFIG#"$ROOT"} does not pass fer-edge check-config: service not (re)started"
    fi
    say "config ok: ${CONFIG#"$ROOT"}"
}

# Start, or restart when something changed; systemctl waits for READY=1 (Type=notify).
# Returns non-zero when systemd could not start it (callers run it under `if`, where set -e is off).
start_service() {
    systemctl daemon-reload || return 1
    systemctl enable --quiet "$SERVICE" || return 1
    if ! service_active; then
        say "starting $SERVICE"
        systemctl start "$SERVICE" || return 1
    elif [ "$CHANGED" = 1 ] || [ "$FORCE_RESTART" = 1 ]; then
        say "restarting $SERVICE"
        systemctl restart "$SERVICE" || return 1
    else
        say "nothing changed; $SERVICE keeps running"
    fi
}

do_install() {
    apt_packages
    service_user
    make_dir "$OPT" 0755
    make_dir "$STATE" 0750 "$SERVICE_USER:$SERVICE_USER"
    make_dir "$RECORDINGS" 0750 "$SERVICE_USER:$SERVICE_USER"
    make_dir "$ETC" 0755
    python_env
    install_model "$MODEL"
    config_file
    unit_files
    check_config
    start_service || start_failed ""
    prune_models  # only now that the service runs with the new model
}

do_model_only() {
    [ -x "$VENV/bin/fer-edge" ] || die "fer-edge is not installed here: run a full install first"
    if ! grep -q "/var/lib/fer-edge/models/current/model.tflite" "$CONFIG"; then
        say "warning: model.path in ${CONFIG#"$ROOT"} is not /var/lib/fer-edge/models/current/model.tflite:" \
            "the service will not use the model swapped in here"
    fi
    install_model "$MODEL"
    check_config
    if [ "$CHANGED" = 0 ] && [ "$FORCE_RESTART" = 0 ]; then
        say "model already active; nothing to do"
        return 0
    fi
    say "restarting $SERVICE with the new model"
    systemctl restart "$SERVICE" || start_failed " with the new model"
    prune_models  # only now that the service runs with the new model: the rollback target was kept
}

do_uninstall() {
    if [ -e "$UNIT" ]; then
        systemctl disable --now --quiet "$SERVICE" || true
    fi
    rm -f "$UNIT" "$DROPIN"
    rmdir "$DROPIN_DIR" 2>/dev/null || true
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
    say "to remove everything: sudo rm -rf /var/lib/fer-edge /etc/fer-edge && sudo userdel $SERVICE_USER"
}

as_root_check
check_seams
case "$MODE" in
    install) do_install ;;
    model) do_model_only ;;
    uninstall) do_uninstall ;;
esac
