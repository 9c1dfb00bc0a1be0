"""Store a trained ``.keras`` model at half its size: float16 weights, compressed.

    python tools/compact_keras.py runs/default/best.keras checkpoints/default.keras

Keras loads the result as usual, into float32 variables (the rounding moves scores by about 1e-3).
The shipped models' Keras originals are kept in ``checkpoints/`` this way, small enough for the
repository and for the GPU machine's carry limit, so a later training stage (teachers, fine-tuning)
starts from them on a fresh checkout.
"""

from __future__ import annotations

import argparse
import io
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np

WEIGHTS = "model.weights.h5"


def compact_weights(raw: bytes) -> bytes:
    out = io.BytesIO()
    with h5py.File(io.BytesIO(raw), "r") as src, h5py.File(out, "w") as dst:
        dst.attrs.update(src.attrs)

        def copy(name, obj):
            if isinstance(obj, h5py.Group):
                dst.require_group(name).attrs.update(obj.attrs)
                return
            values = obj[()]
            if getattr(values, "dtype", None) == np.float32:
                values = values.astype(np.float16)
            options = {"compression": "gzip", "compression_opts": 9} if np.size(values) > 16 else {}
            dst.create_dataset(name, data=values, **options).attrs.update(obj.attrs)

        src.visititems(copy)
    return out.getvalue()


def compact(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(source) as src, zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item.filename, compact_weights(data) if item.filename == WEIGHTS else data)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    args = parser.parse_args(argv)
    try:
        compact(args.source, args.target)
    except (OSError, zipfile.BadZipFile, KeyError) as exc:
        print(f"error: {args.source}: not a .keras model ({exc})", file=sys.stderr)
        return 1
    print(f"{args.target}: {args.target.stat().st_size / 1e6:.1f} MB (from {args.source.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
