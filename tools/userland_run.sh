#!/usr/bin/env bash
# Run a command chrooted into a Debian userland, in a mount namespace of its own: /proc, /dev, /sys, a tmpfs /tmp,
# the host's CA bundle (a TLS-inspecting proxy adds its CA there: pip trusts what the host does) and the binds
# asked for are mounted for the command alone and vanish when it ends. The command replaces this process, so a
# signal sent to it reaches the program inside.
#
#   tools/userland_run.sh USERLAND [--bind HOST:GUEST[:ro]]... [--env NAME=VALUE]... -- COMMAND ARGS...
#
# tools/pi_userland.sh (make pi-check) and bench/ha_check.sh (make ha-check) run their userlands through it.
set -euo pipefail

USERLAND="$1"
shift
binds="" envs=""
while [ $# -gt 0 ]; do
    case "$1" in
        --bind) binds+="$2"$'\n'; shift 2 ;;
        --env) envs+="$2"$'\n'; shift 2 ;;
        --) shift; break ;;
        *) printf 'userland-run: error: unknown option %s\n' "$1" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || { printf 'userland-run: error: no command\n' >&2; exit 2; }
cp -L /etc/resolv.conf "$USERLAND/etc/resolv.conf" 2>/dev/null || true

# shellcheck disable=SC2016  # expanded by the inner bash
USERLAND="$USERLAND" BINDS="$binds" ENVS="$envs" exec unshare --mount --propagation private bash -c '
    set -euo pipefail
    mount -t proc proc "$USERLAND/proc"
    mount --rbind /dev "$USERLAND/dev"
    mount --rbind /sys "$USERLAND/sys"
    mount -t tmpfs tmpfs "$USERLAND/tmp"
    bundle=/etc/ssl/certs/ca-certificates.crt
    if [ -f "$bundle" ] && [ -f "$USERLAND$bundle" ]; then
        mount --bind "$bundle" "$USERLAND$bundle"
    fi
    while IFS=: read -r host guest mode; do
        [ -n "$host" ] || continue
        [ -e "$USERLAND$guest" ] || mkdir -p "$USERLAND$guest"
        mount --bind "$host" "$USERLAND$guest"
        [ "${mode:-}" != ro ] || mount -o remount,bind,ro "$USERLAND$guest"
    done <<< "$BINDS"
    settings=()
    while IFS= read -r setting; do
        [ -z "$setting" ] || settings+=("$setting")
    done <<< "$ENVS"
    exec chroot "$USERLAND" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin \
        HOME=/root LANG=C.UTF-8 PIP_CERT="$bundle" SSL_CERT_FILE="$bundle" "${settings[@]}" "$@"
' bash "$@"
