"""Make the bundled demo clip ``assets/demo.mp4`` (and its ground truth ``assets/demo.json``).

Real faces, free to ship: FER-2013 PrivateTest images (never used for training or selection),
upscaled into a 640x360 camera-like scene, moving slowly, one expression after another, with
face-free stretches at both ends. Faces are picked by label and by OpenCV's Haar cascade finding
them, never by what our model predicts.

    python tools/make_demo_clip.py [--data DIR] [--out assets/demo.mp4]
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import av
import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from train import data  # noqa: E402

WIDTH, HEIGHT, FPS = 640, 360, 30
FACE_SIDE = 176
EMPTY_HEAD_S, EMPTY_TAIL_S, SHOT_S = 1.0, 1.0, 2.0
SEQUENCE = ("neutral", "happy", "surprise", "sad", "angry", "happy")


def pick_faces(split: data.Split, cascade, room, feather, shot: int, head: int, seed: int = 7):
    """For each shot, the first face (in a seeded random order) that the Haar cascade finds in every
    frame of the shot as rendered, on a frame downscaled to half size as the device detects."""
    rng = np.random.default_rng(seed)
    picked = []
    for shot_index, label in enumerate(SEQUENCE):
        frames = range(head + shot_index * shot, head + (shot_index + 1) * shot)
        for i in rng.permutation(np.flatnonzero(split.y == data.CLASS_NAMES.index(label)))[:200]:
            face = cv2.resize(split.x[i], (FACE_SIDE, FACE_SIDE), interpolation=cv2.INTER_CUBIC)
            if all(_found(cascade, render(room, face, feather, n)[0]) for n in frames[::3]):
                picked.append((label, face))
                break
        else:
            raise SystemExit(f"no {label} face is found in every frame of its shot")
    return picked


def _found(cascade, image) -> bool:
    small = cv2.resize(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (WIDTH // 2, HEIGHT // 2), interpolation=cv2.INTER_AREA)
    return len(cascade.detectMultiScale(small, 1.1, 5, minSize=(20, 20))) == 1


def render(room, face, feather, n: int):
    """Frame ``n`` with ``face`` (or none) in the scene, before camera noise; and the face's box."""
    frame = room.astype(np.float32)
    box = None
    if face is not None:
        t = n / FPS
        side = round(FACE_SIDE * (1.0 + 0.08 * math.sin(t * 1.3)))
        cx = WIDTH / 2 + 110 * math.sin(t * 0.7)
        cy = HEIGHT / 2 - 10 + 12 * math.sin(t * 1.9)
        x0, y0 = round(cx - side / 2), round(cy - side / 2)
        resized = cv2.resize(face, (side, side), interpolation=cv2.INTER_LINEAR).astype(np.float32)[..., None]
        mask = cv2.resize(feather, (side, side))[..., None]
        region = frame[y0 : y0 + side, x0 : x0 + side]
        region[:] = region * (1 - mask) + resized * mask
        box = [x0, y0, side, side]
    light = 1.0 + 0.06 * math.sin(n / FPS * 0.5)
    return np.clip(frame * light, 0, 255).astype(np.uint8), box


def background(rng: np.random.Generator) -> np.ndarray:
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    room = (70 + 60 * x / WIDTH + 30 * y / HEIGHT).astype(np.float32)
    room = np.dstack([room * 0.9, room, room * 1.05])
    cv2.rectangle(room, (30, 40), (150, 250), (60, 80, 100), -1)  # a door
    cv2.rectangle(room, (470, 60), (600, 150), (150, 170, 160), -1)  # a picture on the wall
    cv2.rectangle(room, (0, 300), (WIDTH, HEIGHT), (50, 55, 60), -1)  # a desk
    room += rng.normal(0, 4, room.shape).astype(np.float32)
    return np.clip(room, 0, 255).astype(np.uint8)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="FER-2013 folder (default: $FER2013_DIR, then ../shared/fer2013)")
    parser.add_argument("--out", default="assets/demo.mp4")
    args = parser.parse_args()

    cascade = cv2.CascadeClassifier(cv2.data.haarcascades + "haarcascade_frontalface_default.xml")
    split = data.load_split(data.resolve_data_dir(args.data), "private")
    rng = np.random.default_rng(0)
    room = background(rng)
    feather = np.zeros((FACE_SIDE, FACE_SIDE), np.float32)
    cv2.circle(feather, (FACE_SIDE // 2, FACE_SIDE // 2), FACE_SIDE // 2 - 4, 1.0, -1)
    feather = cv2.GaussianBlur(feather, (0, 0), 8)[..., None]
    head, tail, shot = (round(s * FPS) for s in (EMPTY_HEAD_S, EMPTY_TAIL_S, SHOT_S))
    faces = pick_faces(split, cascade, room, feather, shot, head)

    total = head + shot * len(faces) + tail
    truth = {"fps": FPS, "width": WIDTH, "height": HEIGHT, "frames": total, "faces": []}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(out), "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"crf": "26", "preset": "slow"})
        stream.width, stream.height, stream.pix_fmt = WIDTH, HEIGHT, "yuv420p"
        for n in range(total):
            shot_index = (n - head) // shot
            label, face = faces[shot_index] if 0 <= shot_index < len(faces) else (None, None)
            image, box = render(room, face, feather, n)
            if box is not None:
                truth["faces"].append({"frame": n, "label": label, "box": box})
            noisy = np.clip(image + rng.normal(0, 3, image.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(noisy, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    truth["switch_frames"] = [head + shot * i for i in range(1, len(faces))]
    out.with_suffix(".json").write_text(json.dumps(truth) + "\n")
    print(f"wrote {out} ({out.stat().st_size // 1024} kB, {total} frames) and {out.with_suffix('.json')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
