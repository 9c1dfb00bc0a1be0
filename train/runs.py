"""``python -m train.runs CONFIG``: the run folders CONFIG trains, one a line (for make convert and evaluate)."""

from __future__ import annotations

import argparse
import os
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train.runs", description=__doc__)
    parser.add_argument("config", help="training YAML (see configs/)")
    args = parser.parse_args(argv)
    if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        from train.quiet import import_tensorflow_quietly

        import_tensorflow_quietly()  # checking the config's models imports Keras
    from train.config import ConfigError, load_config

    try:
        runs = [str(run) for run in load_config(args.config).run_dirs.values()]
    except ConfigError as exc:
        where = "" if str(exc).startswith(args.config) else f"{args.config}: "
        print(f"error: {where}{exc}", file=sys.stderr)
        return 2
    if not runs:
        print(f"error: {args.config} names no runs", file=sys.stderr)
        return 2
    print("\n".join(runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
