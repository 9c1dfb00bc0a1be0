"""The shipped int8 models on the Pi's userland against x86: the same faces in, the raw outputs compared.

Three steps, run by bench/pi_check.sh:
  faces    (x86)   FER-2013 PrivateTest faces, spread over the classes, as one uint8 array (N, 48, 48)
  infer    (both)  one model's raw uint8 outputs for those faces, with whatever TFLite runtime is installed
  compare  (x86)   argmax agreement and the largest difference (in steps of the output's 1/256 scale)
Runs with NumPy 1.24 and without OpenCV except for `faces`; no fer_edge import, so it works as the
device package is reorganised.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def interpreter(model: Path, threads: int):
    """The runtime the device would use: LiteRT first, then tflite-runtime, then TensorFlow's."""
    try:
        from ai_edge_litert.interpreter import Interpreter

        runtime = "ai-edge-litert"
    except ImportError:
        try:
            from tflite_runtime.interpreter import Interpreter

            runtime = "tflite-runtime"
        except ImportError:
            from tensorflow.lite import Interpreter  # type: ignore[no-redef]

            runtime = "tensorflow"
    return Interpreter(model_path=str(model), num_threads=threads), runtime


def faces(fer_dir: Path, count: int, out: Path) -> None:
    import cv2

    files = sorted((fer_dir / "test").glob("*/PrivateTest_*.jpg"))
    if len(files) < count:
        sys.exit(f"pi-parity: error: {len(files)} PrivateTest faces in {fer_dir}/test, {count} asked")
    # every k-th of the sorted list: all seven class folders, in proportion
    picked = [files[int(i * len(files) / count)] for i in range(count)]
    stack = np.stack([cv2.imread(str(path), cv2.IMREAD_GRAYSCALE) for path in picked])
    assert stack.shape == (count, 48, 48) and stack.dtype == np.uint8, stack.shape
    np.save(out, stack)
    out.with_suffix(".json").write_text(
        json.dumps({"files": [str(p.relative_to(fer_dir)) for p in picked], "labels": [p.parent.name for p in picked]})
    )


def infer(faces_file: Path, model: Path, out: Path, threads: int) -> None:
    stack = np.load(faces_file)
    interp, runtime = interpreter(model, threads)
    inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
    shape = list(inp["shape"])
    if shape[1:3] != list(stack.shape[1:3]) or inp["dtype"] != np.uint8:
        sys.exit(f"pi-parity: error: {model} takes {shape} {inp['dtype']}, the faces are {stack.shape} uint8")
    batch = stack[..., None]
    started = time.perf_counter()
    try:  # one invoke for the whole batch: the per-call overhead is large under emulation
        interp.resize_tensor_input(inp["index"], [len(stack), *shape[1:]])
        interp.allocate_tensors()
        interp.set_tensor(inp["index"], batch)
        interp.invoke()
        outputs = interp.get_tensor(interp.get_output_details()[0]["index"]).copy()
        mode = "batch"
    except (RuntimeError, ValueError):
        interp, _ = interpreter(model, threads)
        interp.allocate_tensors()
        rows = []
        for face in batch:
            interp.set_tensor(inp["index"], face[None])
            interp.invoke()
            rows.append(interp.get_tensor(outp["index"])[0].copy())
        outputs = np.stack(rows)
        mode = "one by one"
    seconds = time.perf_counter() - started
    np.save(out, outputs)
    out.with_suffix(".json").write_text(
        json.dumps({"runtime": runtime, "mode": mode, "seconds": round(seconds, 2), "dtype": str(outputs.dtype)})
    )


def compare(reference: Path, candidate: Path) -> dict:
    ref, cand = np.load(reference).astype(np.int32), np.load(candidate).astype(np.int32)
    if ref.shape != cand.shape:
        sys.exit(f"pi-parity: error: {reference} is {ref.shape}, {candidate} is {cand.shape}")
    diff = np.abs(ref - cand)
    return {
        "faces": int(len(ref)),
        "argmax_agree": int((ref.argmax(1) == cand.argmax(1)).sum()),
        "max_diff": int(diff.max()),
        "outputs_differing": int((diff > 0).sum()),
        "outputs": int(diff.size),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="pi-parity", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("faces")
    p.add_argument("--fer", type=Path, required=True)
    p.add_argument("--count", type=int, default=512)
    p.add_argument("--out", type=Path, required=True)
    p = sub.add_parser("infer")
    p.add_argument("--faces", type=Path, required=True)
    p.add_argument("--model", type=Path, nargs="+", required=True)
    p.add_argument("--out", type=Path, nargs="+", required=True, help="one per --model")
    p.add_argument("--threads", type=int, default=2)
    p = sub.add_parser("compare")
    p.add_argument("reference", type=Path)
    p.add_argument("candidate", type=Path)
    args = parser.parse_args(argv)
    if args.command == "faces":
        faces(args.fer, args.count, args.out)
    elif args.command == "infer":
        if len(args.model) != len(args.out):
            parser.error("one --out per --model")
        for model, out in zip(args.model, args.out):  # one process: start-up is slow under emulation
            infer(args.faces, model, out, args.threads)
    else:
        print(json.dumps(compare(args.reference, args.candidate)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
