"""``python -m train``: train a FER-2013 model, then evaluate it on PublicTest into its run folder."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# overrides that change where a run reads and writes, not what it trains: with only these, the
# configuration file still reproduces the run (run.json records the data folder it used)
PLACE_OVERRIDES = frozenset({"data", "output_dir"})


def budget_seconds(value: str) -> float:
    """A time budget that can be met: seconds above 0, finite (``inf`` or ``nan`` failed only once the first
    epochs had been trained and timed)."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of seconds, got {value!r}") from None
    if not math.isfinite(seconds) or seconds <= 0:
        raise argparse.ArgumentTypeError(f"expected a finite number of seconds above 0, got {value}")
    return seconds


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m train", description=__doc__)
    parser.add_argument("--config", help="training YAML, see configs/ (default: the built-in defaults)")
    parser.add_argument("--data", help="FER-2013 folder or fer2013.csv (default: $FER2013_DIR, then ../shared/fer2013)")
    parser.add_argument(
        "--model", help="model name, e.g. seed (the origin's CNN) or vgg_bn (default: the config's, built in vgg_bn)"
    )
    parser.add_argument("--epochs", type=int, help="epochs to train (default: the config's, built in 60)")
    parser.add_argument(
        "--run-name",
        help="run folder name under output_dir (default: the config's, built in default; with --model, its name)",
    )
    parser.add_argument(
        "--output-dir", help="the folder that holds the run folders (default: the config's, built in runs)"
    )
    parser.add_argument(
        "--limit-per-class",
        type=int,
        help="train on a class-balanced subset of this many faces per class (default: every face)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from the run folder's last checkpoint")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation reports (PublicTest)")
    parser.add_argument(
        "--export",
        action="store_true",
        help="do not train: write each run's best.keras from its best.weights.h5 (a run cut short), then evaluate",
    )
    parser.add_argument(
        "--time-budget",
        type=budget_seconds,
        metavar="SECONDS",
        help="train as many epochs (up to the config's) as fit in this time; the run's config.yaml records how "
        "many (default: no limit)",
    )
    args = parser.parse_args(argv)
    deadline = None if args.time_budget is None else time.monotonic() + args.time_budget
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if os.environ.get("KERAS_BACKEND", "tensorflow") == "tensorflow":
        from train.quiet import import_tensorflow_quietly

        import_tensorflow_quietly()

    from train.config import ConfigError, load_config
    from train.data import DataError

    overrides = {
        k: v
        for k, v in {
            "data": args.data,
            "model.name": args.model,
            "epochs": args.epochs,
            "run_name": args.run_name,
            "output_dir": args.output_dir,
            "limit_per_class": args.limit_per_class,
        }.items()
        if v is not None
    }
    if args.model:
        overrides["model.params"] = {}  # a config's parameters and students belong to its own model
        overrides["students"] = {}
        overrides.setdefault("run_name", args.model)
    try:
        cfg = load_config(args.config, overrides)
        from train.evaluate import evaluate_run
        from train.fit import BEST_WEIGHTS, export_runs, train

        if args.export:
            for run_dir in cfg.run_dirs.values():
                if not (run_dir / BEST_WEIGHTS).is_file():
                    hint = "train the run first, or name a trained one (--run-name, --output-dir)"
                    print(f"error: {run_dir / BEST_WEIGHTS} not found: {hint}", file=sys.stderr)
                    return 2
            export_runs(cfg)
        else:
            # run.json names the configuration file only if it alone reproduces the run
            recipe_file = None if set(overrides) - PLACE_OVERRIDES else args.config
            train(cfg, resume=args.resume, deadline=deadline, config_path=recipe_file)
        if not args.no_eval:
            for run_dir in cfg.run_dirs.values():
                evaluate_run(run_dir, cfg.data, cfg.cache_dir)
    except (ConfigError, DataError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a full disk, an unwritable folder: the last checkpoint, replaced only whole, resumes
        print(f"error: {exc.filename}: {exc.strerror}" if exc.filename else f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted; continue with --resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
