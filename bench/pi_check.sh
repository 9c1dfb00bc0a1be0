#!/usr/bin/env bash
# make pi-check: the device side in the Pi's own userland, from the repository, as root.
#
# An arm64 Debian bookworm userland (tools/pi_userland.sh: debootstrap + qemu-user-static, cached in
# /var/cache/fer-edge-pi) gets this checkout installed the way a Pi does: deploy/install.sh --userland
# (no systemd as PID 1, no Raspberry Pi archive, so no python3-picamera2) from requirements-pi.lock with
# --require-hashes, once as the plain service and once as a camera instance. Then, inside it:
#   fer-edge check-config                   the installed config
#   fer-edge run                            the first PI_FRAMES frames of a shared clip -> MP4 + events, checked
#   bench/pi_parity.py infer                both shipped int8 models on PI_FACES FER-2013 faces, compared with x86
#   systemd-analyze verify                  fer-edge.service and fer-edge@.service as installed
# Writes bench/results-pi.md and bench/results-pi.json. PI_FRESH=1 rebuilds the userland first; PI_BOARD=pi4
# emulates a Pi 4's core instead of a Pi 5's.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO"
FRAMES="${PI_FRAMES:-30}"
FACES="${PI_FACES:-512}"
CLIP="${PI_CLIP:-$(realpath -m "$REPO/../shared/clips/performer-640x360.mp4")}"
FER="${FER2013_DIR:-$REPO/../shared/fer2013}"
HOST_PYTHON="${PI_HOST_PYTHON:-$REPO/.venv-edge/bin/python}"  # the x86 reference: numpy, OpenCV, a TFLite runtime
export PI_USERLAND="${PI_USERLAND:-/var/cache/fer-edge-pi/bookworm-arm64}"
export PI_BOARD="${PI_BOARD:-pi5}"  # the core qemu emulates: pi5 (Cortex-A76) or pi4 (Cortex-A72)
OUT_MD="$REPO/bench/results-pi.md"
OUT_JSON="$REPO/bench/results-pi.json"

die() { printf 'pi-check: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'pi-check: %s\n' "$*" >&2; }

[ "$(id -u)" -eq 0 ] || die "needs root (debootstrap, chroot, binfmt_misc): sudo make pi-check"
[ -f "$CLIP" ] || die "clip not found: $CLIP (PI_CLIP=FILE, or ../shared/clips beside the checkout)"
[ -d "$FER/test" ] || die "FER-2013 not found at $FER (FER2013_DIR=...)"
[ -x "$HOST_PYTHON" ] || die "no x86 reference Python at $HOST_PYTHON: make demo builds .venv-edge (or PI_HOST_PYTHON=...)"

WORK="$(mktemp -d /tmp/pi-check.XXXXXX)"
trap 'rm -rf "$WORK"' EXIT
STEPS="$WORK/steps.tsv"
: > "$STEPS"
start_all=$SECONDS
step_start=$SECONDS
step() {  # step NAME: the time since the last step, for the report
    printf '%s\t%s\n' "$1" "$((SECONDS - step_start))" >> "$STEPS"
    say "$1: $((SECONDS - step_start)) s"
    step_start=$SECONDS
}

if [ "${PI_FRESH:-0}" = 1 ]; then
    say "PI_FRESH=1: removing the cached userland $PI_USERLAND"
    rm -rf "$PI_USERLAND" "$PI_USERLAND.parity"
fi
cold=0
[ -f "$PI_USERLAND/.complete" ] || cold=1
tools/pi_userland.sh > /dev/null
step "userland ($([ $cold = 1 ] && echo built || echo cached))"
inside() { PI_BIND="$WORK:/mnt/pi-check $(dirname "$CLIP"):/mnt/clips:ro" tools/pi_userland.sh --run "$@"; }

# the release, as deploy.sh stages it on a Pi
release="$PI_USERLAND/root/fer-edge-release"
rm -rf "$release"
mkdir -p "$release"
tar -cf - --exclude=__pycache__ --exclude='*.egg-info' --exclude=edge/build edge requirements-edge.txt \
    requirements-pi.lock deploy systemd docs/DEPLOY.md models bench/pi_parity.py | tar -xf - -C "$release"

# the plain service, then a camera instance (the packages are in place by then: only its config and unit)
inside bash /root/fer-edge-release/deploy/install.sh --src /root/fer-edge-release --userland 2> "$WORK/install.log" \
    || { tail -n 30 "$WORK/install.log" >&2; die "install.sh --userland failed (above)"; }
inside bash /root/fer-edge-release/deploy/install.sh --src /root/fer-edge-release --userland --no-apt \
    --instance pi-check --camera 1 --web-port 8081 --device-id pi-check-cam 2>> "$WORK/install.log" \
    || { tail -n 30 "$WORK/install.log" >&2; die "install.sh --userland --instance failed (above)"; }
grep -q 'require-hashes' "$WORK/install.log" || grep -q 'python packages unchanged' "$WORK/install.log" \
    || die "install.sh did not install from requirements-pi.lock: $(grep 'pip' "$WORK/install.log" | head -n 3)"
step "install.sh --userland"

inside /opt/fer-edge/venv/bin/python - > "$WORK/versions.json" <<'PYTHON'
import json, platform, sys
from importlib import metadata
import cv2, numpy
names = ["ai-edge-litert", "opencv-python-headless", "numpy", "av", "paho-mqtt", "PyYAML", "fer-edge"]
versions = {}
for name in names:
    try:
        versions[name] = metadata.version(name)
    except metadata.PackageNotFoundError:
        versions[name] = None
numpy_from = "apt" if numpy.__file__.startswith("/usr/lib/python3/dist-packages") else "venv"
print(json.dumps({"machine": platform.machine(), "python": platform.python_version(), "glibc": platform.libc_ver()[1],
                  "debian": open("/etc/debian_version").read().strip(), "packages": versions,
                  "numpy_from": numpy_from, "cv2": cv2.__version__}))
PYTHON
inside bash -c 'systemctl --version | head -n 1' > "$WORK/systemd-version.txt"

inside /opt/fer-edge/venv/bin/fer-edge check-config --config /etc/fer-edge/config.yaml > "$WORK/check-config.txt" 2>&1 \
    || { cat "$WORK/check-config.txt" >&2; die "fer-edge check-config failed inside the userland"; }
inside /opt/fer-edge/venv/bin/fer-edge check-config --config /etc/fer-edge/pi-check.yaml >> "$WORK/check-config.txt" 2>&1 \
    || { cat "$WORK/check-config.txt" >&2; die "fer-edge check-config of the instance failed inside the userland"; }
step "check-config"

# the installed config, with the clip instead of the camera, recording every frame into the work folder
inside /opt/fer-edge/venv/bin/python - <<'PYTHON'
import yaml
cfg = yaml.safe_load(open("/etc/fer-edge/config.yaml"))
cfg["source"].update(kind="file", path="/mnt/clips/CLIP")
cfg["recording"].update(output_dir="/mnt/pi-check/run", presence_triggered=False)
yaml.safe_dump(cfg, open("/mnt/pi-check/run.yaml", "w"))
PYTHON
sed -i "s|/mnt/clips/CLIP|/mnt/clips/$(basename "$CLIP")|" "$WORK/run.yaml"
run_start=$SECONDS
inside /opt/fer-edge/venv/bin/fer-edge run --config /mnt/pi-check/run.yaml --max-frames "$FRAMES" \
    > "$WORK/run.log" 2>&1 || { tail -n 20 "$WORK/run.log" >&2; die "fer-edge run failed inside the userland"; }
run_seconds=$((SECONDS - run_start))
inside /opt/fer-edge/venv/bin/python - "$FRAMES" > "$WORK/run.json" <<'PYTHON'
import glob, json, sys
import av
frames = int(sys.argv[1])
videos = sorted(glob.glob("/mnt/pi-check/run/**/*.mp4", recursive=True))
events = sorted(glob.glob("/mnt/pi-check/run/**/*.jsonl", recursive=True))
decoded = 0
for video in videos:
    with av.open(video) as container:
        decoded += sum(1 for _ in container.decode(video=0))
lines = [json.loads(line) for path in events for line in open(path)]
faces = sum(len(line.get("faces", [])) for line in lines)
print(json.dumps({"videos": len(videos), "frames_decoded": decoded, "event_lines": len(lines), "faces": faces,
                  "frames_asked": frames}))
PYTHON
python3 - "$WORK/run.json" <<'PYTHON' || die "the recording inside the userland is short: $(cat "$WORK/run.json")"
import json, sys
run = json.load(open(sys.argv[1]))
ok = run["videos"] >= 1 and run["frames_decoded"] == run["frames_asked"] == run["event_lines"] and run["faces"] > 0
sys.exit(0 if ok else 1)
PYTHON
step "fer-edge run"

"$HOST_PYTHON" bench/pi_parity.py faces --fer "$FER" --count "$FACES" --out "$WORK/faces.npy"
models=(fer_int8 fer_fast_int8)
# The arm64 outputs are cached by what decides them: the model's bytes, the faces, the installed versions,
# the emulated core and this script's inference code (PI_PARITY_CACHE=0 recomputes; PI_FRESH=1 clears it).
PARITY_CACHE="$PI_USERLAND.parity"
mkdir -p "$PARITY_CACHE"
x86_in=() x86_out=() arm_in=() arm_out=() arm_keys=()
for model in "${models[@]}"; do
    x86_in+=("models/$model.tflite") x86_out+=("$WORK/x86-$model.npy")
    key="$(cat "models/$model.tflite" "$WORK/faces.npy" "$WORK/versions.json" bench/pi_parity.py <(echo "$PI_BOARD") \
        | sha256sum | cut -c1-16)"
    if [ "${PI_PARITY_CACHE:-1}" = 1 ] && [ -f "$PARITY_CACHE/$key.json" ]; then
        cp "$PARITY_CACHE/$key.npy" "$WORK/arm64-$model.npy"
        python3 -c 'import json, sys; d = json.load(open(sys.argv[1])); d["cached"] = True; print(json.dumps(d))' \
            "$PARITY_CACHE/$key.json" > "$WORK/arm64-$model.json"
        say "parity: arm64 outputs of $model from the cache ($key)"
        continue
    fi
    arm_in+=("/root/fer-edge-release/models/$model.tflite") arm_out+=("/mnt/pi-check/arm64-$model.npy")
    arm_keys+=("$model:$key")
done
"$HOST_PYTHON" bench/pi_parity.py infer --faces "$WORK/faces.npy" --model "${x86_in[@]}" --out "${x86_out[@]}" 2>/dev/null
if [ ${#arm_in[@]} -gt 0 ]; then
    inside /opt/fer-edge/venv/bin/python /root/fer-edge-release/bench/pi_parity.py infer --faces /mnt/pi-check/faces.npy \
        --model "${arm_in[@]}" --out "${arm_out[@]}" 2>/dev/null
    for entry in "${arm_keys[@]}"; do
        cp "$WORK/arm64-${entry%%:*}.npy" "$PARITY_CACHE/${entry#*:}.npy"
        cp "$WORK/arm64-${entry%%:*}.json" "$PARITY_CACHE/${entry#*:}.json"
    done
fi
for model in "${models[@]}"; do
    "$HOST_PYTHON" bench/pi_parity.py compare "$WORK/x86-$model.npy" "$WORK/arm64-$model.npy" > "$WORK/parity-$model.json"
done
step "parity"

inside bash -c 'cd /etc/systemd/system && systemd-analyze verify fer-edge.service fer-edge@pi-check.service fer-edge.slice' \
    > "$WORK/verify.txt" 2>&1 || true
step "systemd-analyze verify"

"$HOST_PYTHON" - "$WORK" "$OUT_MD" "$OUT_JSON" "$cold" "$((SECONDS - start_all))" "$run_seconds" "$(basename "$CLIP")" \
    "$("$HOST_PYTHON" -c 'import platform; print(platform.machine(), platform.python_version())')" "$PI_BOARD" <<'PYTHON'
import datetime, json, sys
from pathlib import Path
work, out_md, out_json = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
cold, total, run_seconds, clip, host = sys.argv[4] == "1", int(sys.argv[5]), int(sys.argv[6]), sys.argv[7], sys.argv[8]
board = {"pi5": "a Raspberry Pi 5's Cortex-A76", "pi4": "a Raspberry Pi 4's Cortex-A72"}[sys.argv[9]]
versions = json.loads((work / "versions.json").read_text())
run = json.loads((work / "run.json").read_text())
verify = (work / "verify.txt").read_text().strip()
steps = [line.split("\t") for line in (work / "steps.tsv").read_text().splitlines()]
parity = {}
for model in ("fer_int8", "fer_fast_int8"):
    parity[model] = json.loads((work / f"parity-{model}.json").read_text())
    parity[model]["arm64"] = json.loads((work / f"arm64-{model}.json").read_text())
    parity[model]["x86"] = json.loads((work / f"x86-{model}.json").read_text())
result = {
    "date": datetime.date.today().isoformat(), "board": sys.argv[9], "cold": cold, "seconds": total, "steps": dict(steps),
    "userland": versions | {"systemd": (work / "systemd-version.txt").read_text().strip()},
    "run": run | {"clip": clip, "seconds": run_seconds}, "parity": parity, "verify": verify, "x86": host,
}
ok = verify == "" and all(p["argmax_agree"] == p["faces"] for p in parity.values())
result["passed"] = ok
out_json.write_text(json.dumps(result, indent=2) + "\n")
p = versions["packages"]
lines = [
    "## The device side on arm64 (`make pi-check`)",
    "",
    f"Debian {versions['debian']} arm64 userland under qemu-user-static, emulating {board} "
    f"({versions['machine']}, Python "
    f"{versions['python']}, glibc {versions['glibc']}, {result['userland']['systemd']}), installed by "
    "`deploy/install.sh --userland` from `requirements-pi.lock` (`pip --require-hashes`).",
    "",
    "| package | version |",
    "|---|---|",
    *[f"| {name} | {version or 'not installed'}{' (apt)' if name == 'numpy' and versions['numpy_from'] == 'apt' else ''} |"
      for name, version in p.items()],
    "",
    f"`fer-edge run` on the first {run['frames_asked']} frames of `{clip}`: {run['videos']} MP4 with "
    f"{run['frames_decoded']} frames decoded, {run['event_lines']} event lines, {run['faces']} faces "
    f"({run_seconds} s under emulation, start-up included).",
    "",
    "| model | faces (FER-2013 PrivateTest) | argmax agrees with x86 | largest difference (of 256) | outputs differing "
    "| arm64 invoke |",
    "|---|---:|---:|---:|---:|---:|",
    *[f"| `models/{m}.tflite` | {r['faces']} | {r['argmax_agree']}/{r['faces']} | {r['max_diff']} | "
      f"{r['outputs_differing']}/{r['outputs']} | {r['arm64']['seconds']} s ({r['arm64']['mode']})"
      f"{', cached' if r['arm64'].get('cached') else ''} |"
      for m, r in parity.items()],
    "",
    *(["Outputs marked cached are an earlier run's, reused because the model, the faces, the installed versions, "
       "the emulated core and `bench/pi_parity.py` are all the same (`PI_PARITY_CACHE=0` recomputes them).", ""]
      if any(r["arm64"].get("cached") for r in parity.values()) else []),
    "`systemd-analyze verify` of `fer-edge.service`, `fer-edge@pi-check.service` and `fer-edge.slice` as installed: "
    + ("clean." if verify == "" else f"\n\n```\n{verify}\n```"),
    "",
    f"Measured by `make pi-check` on {result['date']} ({'cold: userland built' if cold else 'cached userland'}, "
    f"{total} s in all: " + ", ".join(f"{name} {s} s" for name, s in steps) + f"); x86 reference: {host} with "
    f"{parity['fer_int8']['x86']['runtime']}. Not covered: python3-picamera2 (only in the Raspberry Pi archive), "
    "systemd as PID 1 (READY, watchdog, limits), the Pi's CPU and camera.",
    "",
]
out_md.write_text("\n".join(lines))
print("\n".join(lines))
sys.exit(0 if ok else 1)
PYTHON
