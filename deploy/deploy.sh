#!/usr/bin/env bash
# Deploy fer-edge from this checkout to a Raspberry Pi over ssh, install it there, show how it runs.
#
#   deploy/deploy.sh PI=pi@raspberrypi.local            (or: deploy/deploy.sh pi@raspberrypi.local)
#   deploy/deploy.sh PI=pi@10.0.0.7 --port 2222 --identity ~/.ssh/pi_ed25519
#   deploy/deploy.sh PI=pi@pi --model models/fer_float16.tflite -- --no-apt
#
# Copies edge/, requirements-edge.txt, requirements-pi.lock, deploy/, systemd/, docs/DEPLOY.md and the model with its JSON to
# a new folder inside the staging folder on the Pi (tar over ssh: nothing but ssh needed on either
# side), runs `sudo deploy/install.sh --restart` there and removes that new folder (nothing else in the
# staging folder is touched), then prints `systemctl status` of the service and its camera instances and the
# last journal lines.
# Arguments after `--` go to install.sh. deploy/deploy-model.sh is this script with --model-only.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET="${PI:-}"
MODEL="$REPO/models/fer_int8.tflite"
STAGING="fer-edge-deploy"  # relative: in the remote user's home
MODEL_ONLY=0
RESTART=1
read -r -a SSH_CMD <<< "${SSH:-ssh}"
SSH_ARGS=()
INSTALL_ARGS=()
SECRETS=()  # credential-name=local-file

usage() {
    cat <<EOF
usage: $0 [PI=]user@host [options] [-- install.sh options]
  --port N              ssh port (default 22)
  --identity FILE       ssh private key
  --ssh-option OPT      extra ssh -o option, repeatable (e.g. StrictHostKeyChecking=accept-new)
  --model FILE          .tflite with its .json beside it (default: models/fer_int8.tflite)
  --staging DIR         folder on the Pi that receives the upload (default: ~/$STAGING): each deploy
                        unpacks into a new folder inside it and removes only that one afterwards
  --model-only          upload only the model and swap it in (what deploy-model.sh does)
  --no-restart          leave the service running when nothing changed
  --web-token-file F    install F as the live view's token, --mqtt-password-file F as the MQTT password:
                        systemd credentials web-token / mqtt-password (root-only files on the Pi, never
                        in the repository or the config; see docs/INTEGRATION.md)
environment: PI=user@host, SSH (the ssh command, default ssh)
EOF
}

say() { printf 'deploy: %s\n' "$*" >&2; }
die() { printf 'deploy: error: %s\n' "$*" >&2; exit 1; }
# need OPTION WHAT VALUE: the option was given its value (${2:?} would name this script's line, not the option)
need() { [ -n "$3" ] || die "$1 needs $2"; }

while [ $# -gt 0 ]; do
    case "$1" in
        PI=*) TARGET="${1#PI=}"; shift ;;
        --port)
            need "$1" "a number" "${2:-}"
            case "$2" in *[!0-9]*) die "--port: expected a port number 1-65535, got '$2'" ;; esac
            [ "${#2}" -le 5 ] && [ "$2" -ge 1 ] && [ "$2" -le 65535 ] \
                || die "--port: expected a port number 1-65535, got '$2'"
            SSH_ARGS+=(-p "$2"); shift 2 ;;
        --identity)
            need "$1" "a file" "${2:-}"
            [ -f "$2" ] && [ -r "$2" ] || die "--identity: $2 is not a readable file"
            SSH_ARGS+=(-i "$2" -o IdentitiesOnly=yes); shift 2 ;;
        --ssh-option) need "$1" "KEY=VALUE" "${2:-}"; SSH_ARGS+=(-o "$2"); shift 2 ;;
        --model) need "$1" "a file" "${2:-}"; MODEL="$2"; shift 2 ;;
        --staging) need "$1" "a folder" "${2:-}"; STAGING="$2"; shift 2 ;;
        --model-only) MODEL_ONLY=1; shift ;;
        --no-restart) RESTART=0; shift ;;
        --web-token-file) need "$1" "a file" "${2:-}"; SECRETS+=("web-token=$2"); shift 2 ;;
        --mqtt-password-file) need "$1" "a file" "${2:-}"; SECRETS+=("mqtt-password=$2"); shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; INSTALL_ARGS=("$@"); break ;;
        -*) usage >&2; die "unknown option: $1" ;;
        *) TARGET="$1"; shift ;;
    esac
done
[ -n "$TARGET" ] || { usage >&2; die "no Pi given: PI=user@host"; }
case "$STAGING" in
    *[!A-Za-z0-9._/-]*|"") die "--staging: use letters, digits, . _ - / only" ;;
esac
for secret in ${SECRETS[@]+"${SECRETS[@]}"}; do
    file="${secret#*=}"
    [ -f "$file" ] && [ -r "$file" ] && [ -n "$(tr -d '[:space:]' < "$file")" ] \
        || die "--${secret%%=*}-file: $file is not a readable file with a secret in it"
done

# ${a[@]+"${a[@]}"} expands an empty array under set -u, also in macOS' bash 3.2.
remote() { "${SSH_CMD[@]}" ${SSH_ARGS[@]+"${SSH_ARGS[@]}"} "$@"; }

sha256() {
    if command -v sha256sum >/dev/null; then sha256sum "$1"; else shasum -a 256 "$1"; fi | cut -d' ' -f1
}

# --- what goes to the Pi -----------------------------------------------------------------------

SIDECAR="${MODEL%.tflite}.json"
[ -f "$MODEL" ] || die "model not found: $MODEL"
[ -f "$SIDECAR" ] || die "model sidecar not found: $SIDECAR"
want="$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["sha256"])' "$SIDECAR")" \
    || die "$SIDECAR: not a model sidecar"
[ "$(sha256 "$MODEL")" = "$want" ] || die "$MODEL does not match the sha256 in $SIDECAR"
MODEL_DIR="$(cd "$(dirname "$MODEL")" && pwd)"
MODEL_NAME="$(basename "$MODEL")"

payload=(deploy/install.sh)
if [ "$MODEL_ONLY" = 0 ]; then
    payload+=(edge requirements-edge.txt requirements-pi.lock deploy systemd)
    [ ! -f "$REPO/docs/DEPLOY.md" ] || payload+=(docs/DEPLOY.md)
fi
for path in "${payload[@]}"; do
    [ -e "$REPO/$path" ] || die "$path missing from $REPO"
done

# Remote commands start in the login folder; `stage` becomes the absolute staging folder, `upload` the
# new folder inside it that this deploy unpacks into. It is made with mkdir without -p, which fails when
# it exists, so the only folder removed afterwards is one this deploy created: never a user's folder.
UPLOAD_NAME="fer-edge-upload.$(date +%Y%m%d-%H%M%S).$$"
stage_cd="stage=$STAGING; case \$stage in /*) ;; *) stage=\$HOME/\$stage ;; esac; upload=\$stage/$UPLOAD_NAME"
# shellcheck disable=SC2016  # expanded by the remote shell
as_root='if [ "$(id -u)" -eq 0 ]; then root=; else root=sudo; fi'
install_cmd="\$root bash \"\$upload/deploy/install.sh\" --src \"\$upload\" --model \"\$upload/\"$(printf '%q' "$MODEL_NAME")"
[ "$MODEL_ONLY" = 0 ] || install_cmd+=" --model-only"
[ "$RESTART" = 0 ] || install_cmd+=" --restart"
for arg in ${INSTALL_ARGS[@]+"${INSTALL_ARGS[@]}"}; do
    install_cmd+=" $(printf '%q' "$arg")"
done

say "uploading to $TARGET:$STAGING/$UPLOAD_NAME: ${payload[*]} $MODEL_NAME"
tar -czf - --exclude=__pycache__ --exclude='*.egg-info' --exclude=edge/build -C "$REPO" "${payload[@]}" \
        -C "$MODEL_DIR" "$MODEL_NAME" "$(basename "$SIDECAR")" \
    | remote "$TARGET" "$stage_cd; mkdir -p \"\$stage\" && mkdir \"\$upload\" &&
        { tar -xzf - -C \"\$upload\" || { rm -rf \"\$upload\"; exit 1; }; }" \
    || die "upload to $TARGET:$STAGING/$UPLOAD_NAME failed"

# --- secrets: systemd credentials -------------------------------------------------------------
# Each secret goes over ssh's stdin into the upload folder (0600, removed with it); install.sh --credential then
# installs it as /etc/fer-edge/credentials/NAME (0600 root) with the drop-ins that load it (LoadCredential=)
# into the plain service and every camera instance, and puts the previous one back if the install fails.
# fer-edge reads $CREDENTIALS_DIRECTORY/NAME; the service user never reads the file itself.
for secret in ${SECRETS[@]+"${SECRETS[@]}"}; do
    name="${secret%%=*}" file="${secret#*=}"
    remote "$TARGET" "$stage_cd; umask 077; cat > \"\$upload/.secret-$name\"" < "$file" \
        || die "upload of $name to $TARGET failed"
    install_cmd+=" --credential \"$name=\$upload/.secret-$name\""
done

tty=()
[ ! -t 0 ] || tty=(-t)  # sudo may ask for a password
say "installing on $TARGET"
status=0
remote ${tty[@]+"${tty[@]}"} "$TARGET" "$stage_cd; $as_root; $install_cmd; status=\$?; rm -rf \"\$upload\"; exit \$status" \
    || status=$?

# the plain service and every camera instance: an install may restart them all
remote "$TARGET" "$as_root; \$root systemctl status fer-edge 'fer-edge@*' --no-pager --lines 0 || true;
    \$root journalctl -u fer-edge -u 'fer-edge@*' -n 20 --no-pager || true" || true
[ "$status" -eq 0 ] || die "install on $TARGET failed (exit $status)"
say "done: fer-edge on $TARGET is up to date"
