"""Save one annotated frame of the demo's recording as the README picture.

make demo && python tools/demo_frame.py [--frame 100] [--out docs/demo-frame.png]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import av
import cv2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recordings", default="out/demo")
    parser.add_argument("--frame", type=int, default=100)
    parser.add_argument("--out", default="docs/demo-frame.png")
    args = parser.parse_args()
    videos = sorted(Path(args.recordings).glob("*.mp4"))
    if not videos:
        print(f"error: no recording in {args.recordings}: run make demo first", file=sys.stderr)
        return 2
    with av.open(str(videos[-1])) as container:
        for index, frame in enumerate(container.decode(video=0)):
            if index == args.frame:
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                cv2.imwrite(args.out, frame.to_ndarray(format="bgr24"))
                print(f"wrote {args.out} (frame {index} of {videos[-1]})")
                return 0
    print(f"error: {videos[-1]} has fewer than {args.frame + 1} frames", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
