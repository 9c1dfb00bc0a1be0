#!/usr/bin/env bash
# An arm64 Debian bookworm userland (the base of 64-bit Raspberry Pi OS: Python 3.11, NumPy 1.24 from
# apt, systemd 252), built once with debootstrap and run through qemu-user-static, cached outside the
# checkout. Prints the userland's folder on stdout.
#
#   tools/pi_userland.sh                      build it if missing (about 2 minutes), print its folder
#   tools/pi_userland.sh --run CMD ARGS...    run a command inside it (own mount namespace: /proc, /dev,
#                                             /sys and the binds below vanish when it ends)
#   PI_USERLAND=/var/cache/fer-edge-pi/bookworm-arm64   where it lives
#   PI_BIND="host:guest[:ro] ..."              extra bind mounts for --run
#   PI_BOARD=pi5 (default) or pi4              the emulated core and the /proc/cpuinfo it shows
#
# Needs root, debootstrap, qemu-user-static and binfmt_misc. The aarch64 handler is registered here
# (nothing registers it at boot in a container); what is missing is named in one line.
set -euo pipefail

USERLAND="${PI_USERLAND:-/var/cache/fer-edge-pi/bookworm-arm64}"
MIRROR="${PI_MIRROR:-http://deb.debian.org/debian}"
SUITE=bookworm
# systemd for systemd-analyze verify (not as PID 1); the rest is what install.sh needs before apt.
INCLUDE=systemd,python3,python3-venv,ca-certificates,passwd,adduser

die() { printf 'pi-userland: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'pi-userland: %s\n' "$*" >&2; }

# the board whose core qemu emulates and whose /proc/cpuinfo the userland shows: pi5 (Cortex-A76, with the
# dot-product instructions the int8 kernels use) or pi4 (Cortex-A72, without them)
BOARD="${PI_BOARD:-pi5}"
case "$BOARD" in
    pi5) export QEMU_CPU=cortex-a76 ;;
    pi4) export QEMU_CPU=cortex-a72 ;;
    *) die "PI_BOARD=$BOARD: pi4 or pi5" ;;
esac
CPUINFO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/pi/cpuinfo-$BOARD"

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, binfmt_misc): sudo $0"

binfmt() {
    local dir=/proc/sys/fs/binfmt_misc conf=/usr/lib/binfmt.d/qemu-aarch64.conf
    [ "$(uname -m)" = aarch64 ] && return 0
    [ -e /usr/bin/qemu-aarch64-static ] || die "qemu-aarch64-static missing: apt-get install qemu-user-static"
    if [ ! -e "$dir/register" ]; then
        mount -t binfmt_misc binfmt_misc "$dir" 2>/dev/null \
            || die "binfmt_misc is not mounted and cannot be (container without CAP_SYS_ADMIN?):" \
                "mount -t binfmt_misc binfmt_misc $dir on the host"
    fi
    if [ ! -e "$dir/qemu-aarch64" ]; then
        [ -f "$conf" ] || die "$conf missing: apt-get install qemu-user-static"
        # the F flag opens the interpreter now, so the userland needs no copy of qemu
        cat "$conf" > "$dir/register" 2>/dev/null \
            || die "cannot register $conf in $dir (read-only binfmt_misc?): register it on the host"
        say "registered the aarch64 binfmt handler"
    fi
    grep -q '^enabled' "$dir/qemu-aarch64" || die "the aarch64 binfmt handler is disabled: echo 1 > $dir/qemu-aarch64"
}

build() {
    [ -f "$USERLAND/.complete" ] && return 0
    command -v debootstrap >/dev/null || die "debootstrap missing: apt-get install debootstrap"
    rm -rf "$USERLAND"
    mkdir -p "$USERLAND"
    say "debootstrap $SUITE arm64 into $USERLAND (about a minute)"
    debootstrap --arch=arm64 --variant=minbase --include="$INCLUDE" "$SUITE" "$USERLAND" "$MIRROR" \
        > "$USERLAND.debootstrap.log" 2>&1 || die "debootstrap failed: see $USERLAND.debootstrap.log"
    cat > "$USERLAND/etc/apt/sources.list" <<EOF
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
EOF
    touch "$USERLAND/.complete"
}

run() {
    local binds=()
    for bind in ${PI_BIND:-}; do
        binds+=(--bind "$bind")
    done
    # qemu-user passes the host's /proc/cpuinfo through: the TFLite runtime reads it to pick its ARM kernels and
    # crashes on an x86 one. The board's instead (and QEMU_CPU: the instruction set of its core).
    exec "$(dirname "${BASH_SOURCE[0]}")/userland_run.sh" "$USERLAND" --bind "$CPUINFO:/proc/cpuinfo" "${binds[@]}" \
        --env "QEMU_CPU=$QEMU_CPU" -- "$@"
}

binfmt
build
if [ "${1:-}" = --run ]; then
    shift
    run "$@"
else
    echo "$USERLAND"
fi
