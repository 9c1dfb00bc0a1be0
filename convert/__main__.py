"""``python -m convert``: TFLite variants of a trained run, checked against Keras, int8 shipped."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def variant_list(value: str) -> list[str]:
    """``--variants``: known names only, checked before anything loads (an unknown one used to fail only after
    the variants named before it were converted)."""
    from convert import VARIANTS

    names = [name.strip() for name in value.split(",")]
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown variant {', '.join(repr(name) for name in unknown)}; choose from {', '.join(VARIANTS)}"
        )
    return names


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m convert", description=__doc__)
    parser.add_argument("--run", default="runs/default", help="run folder holding best.keras (default: runs/default)")
    parser.add_argument(
        "--variants",
        type=variant_list,
        default="float32,float16,dynamic,int8",
        help="TFLite variants to write, comma-separated (default: float32,float16,dynamic,int8)",
    )
    parser.add_argument("--data", help="FER-2013 folder or fer2013.csv (default: $FER2013_DIR, then ../shared/fer2013)")
    parser.add_argument(
        "--tta",
        choices=("none", "flip"),
        default="none",
        help="flip: average with the mirror image inside the model (twice the MACs) (default: none)",
    )
    parser.add_argument(
        "--ship-as",
        default="",
        help="ship the int8 model and its JSON to this file (e.g. models/fer_int8.tflite), scored on "
        "PrivateTest then; by default the run is a candidate: its models stay in the run "
        "folder, scored on PublicTest only",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="ship even a model from an unfinished run or one scoring lower on PublicTest than the shipped one",
    )
    parser.add_argument(
        "--calibrate",
        nargs="+",
        metavar="MODEL",
        help="do not convert: fit the calibration of these converted .tflite files on PublicTest and rewrite "
        "their sidecars (the models stay as they are; default: none, convert --run)",
    )
    parser.add_argument(
        "--score-private",
        action="store_true",
        help="with --calibrate: also score PrivateTest, for a shipped model in models/ whose sidecar does not "
        "hold these numbers yet (once per shipped model, never to tune on)",
    )
    args = parser.parse_args(argv)
    if args.ship_as and not args.calibrate and "int8" not in args.variants:
        parser.error("--ship-as ships the int8 model: add int8 to --variants")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    # Ctrl-C inside TensorFlow's converter can come out as another exception (its tracing state left broken), so
    # whatever ends the work after a SIGINT is reported as the interruption it was.
    interrupted = []

    def interrupt(signum, frame):
        interrupted.append(signum)
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, interrupt)
    try:
        status = _main(args)
    except BaseException:
        if not interrupted:
            raise
    finally:
        signal.signal(signal.SIGINT, previous)
    if interrupted:
        if args.calibrate:
            print("interrupted: not every model calibrated", file=sys.stderr)
        else:
            print(
                f"interrupted: {args.run} not fully converted{', nothing shipped' * bool(args.ship_as)}",
                file=sys.stderr,
            )
        return 130
    return status


def _main(args: argparse.Namespace) -> int:
    from train.quiet import import_tensorflow_quietly

    import_tensorflow_quietly()
    from convert.tflite import ParityError, PrivateTestError, RunError, ShipError, convert_run, recalibrate
    from fer_edge.contract import ContractError
    from train.data import DataError

    if args.calibrate:
        try:
            for model in args.calibrate:
                recalibrate(Path(model), args.data, private=args.score_private)
        except (ContractError, DataError, OSError, PrivateTestError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    run = Path(args.run)
    for needed, hint in (
        ("best.keras", "train first (make train)"),
        ("run.json", "written by python -m train beside best.keras"),
    ):
        if not (run / needed).is_file():
            print(f"error: {run}/{needed} not found: {hint}", file=sys.stderr)
            return 2
    try:
        convert_run(
            run,
            run / "tflite",
            args.variants,
            args.data,
            ship_as=Path(args.ship_as) if args.ship_as else None,
            tta=args.tta,
            force=args.force,
        )
    except (ParityError, DataError, RunError, ShipError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: converting {run}: {exc}", file=sys.stderr)
        return 1
    if not args.ship_as:
        logging.getLogger("convert").info(
            "not shipped: %s is a candidate; make convert ships only the Makefile's SHIPPED_default and SHIPPED_fast "
            "runs. To ship it as models/fer_int8.tflite: make convert RUN=%s SHIPPED_default=%s (SHIPPED_fast for "
            "the fast model; FORCE=1 if it stopped early or scores lower on PublicTest than the shipped model)",
            run,
            run,
            run,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
