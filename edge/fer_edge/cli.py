"""``fer-edge``: run the device loop, check a config, benchmark the stages, report on events."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import pathlib
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, NoReturn

from fer_edge.arguments import given
from fer_edge.contract import ContractError, missing_model
from fer_edge.errors import ConfigError, FerEdgeError, ModelError, mask_credentials

if TYPE_CHECKING:
    from pathlib import Path

    from fer_edge.config import Config
    from fer_edge.pipeline import RunStats

log = logging.getLogger("fer_edge")


class _Parser(argparse.ArgumentParser):
    """Usage errors end in the same `fer-edge: error:` line as every other failure (argparse names the
    subcommand, `fer-edge run: error:`); the subcommands' parsers are of this class too."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(2, f"fer-edge: error: {' '.join(message.split())}\n")


VERBOSE_HELP = "debug logging and tracebacks"


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="fer-edge", description=__doc__.split("\n")[0].replace("`", ""))
    parser.add_argument("-v", "--verbose", action="store_true", help=VERBOSE_HELP)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the device loop (camera or file -> annotated recording)")
    _add_common(run)
    run.add_argument(
        "--output", type=given, metavar="DIR", help="recording folder (default: recording.output_dir, built in ./out)"
    )
    run.add_argument(
        "--max-frames",
        type=int,
        metavar="N",
        help="stop after N frames (default: no limit: a file to its end, a camera until stopped)",
    )
    run.add_argument("--realtime", action="store_true", help="pace a file at its native frame rate")
    run.add_argument("--no-record", action="store_true", help="write no video and no events")
    run.add_argument(
        "--wait-for-camera",
        action="store_true",
        help="wait for a USB camera or stream that does not open at start, as for one lost (the service's way); "
        "default: an error",
    )

    check = commands.add_parser(
        "check-config",
        help="validate a config and what `run` needs before the camera (model sidecar, Haar cascade, file "
        "source); print the config resolved, as YAML",
    )
    check.add_argument("--config", type=given, metavar="FILE", help="YAML config (default: built-in defaults)")
    check.add_argument(
        "--model",
        type=given,
        metavar="PATH",
        help="TFLite model with its .json sidecar, as `run --model` (default: model.path, else $FER_EDGE_MODEL, "
        "else the shipped fer_int8.tflite, looked for where docs/CONFIG.md says)",
    )
    check.add_argument("-q", "--quiet", action="store_true", help="validate only; print nothing when valid")
    check.add_argument(
        "--model-optional",
        action="store_true",
        help="a model that is not there yet is only a warning (a config checked before its model)",
    )
    check.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)

    bench = commands.add_parser("bench", help="per-stage timings on one thread")
    _add_common(bench)
    bench.add_argument("--frames", type=int, default=300, metavar="N", help="frames to time (default 300)")
    bench.add_argument("--no-record", action="store_true", help="leave recording out of the timings")
    bench.add_argument("--json", action="store_true", help="print JSON instead of a table")

    report = commands.add_parser("report", help="summarize events.jsonl files")
    from fer_edge.analysis.report import add_arguments

    add_arguments(report)
    report.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)
    return parser


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", type=given, metavar="FILE", help="YAML config (default: built-in defaults)")
    parser.add_argument(
        "--source",
        type=given,
        metavar="SRC",
        help="video file, image folder, picamera2, camera (index or /dev path) or URL (default: the config's "
        "source, built in picamera2, else USB camera 0)",
    )
    parser.add_argument(
        "--model",
        type=given,
        metavar="PATH",
        help="TFLite model with its .json sidecar (default: model.path, else $FER_EDGE_MODEL, else the shipped "
        "fer_int8.tflite, looked for where docs/CONFIG.md says)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help=VERBOSE_HELP)


# syslog priorities, which journald reads from a "<N>" prefix on each line (so `journalctl -p warning` works)
SYSLOG_PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))


class JournalFormatter(logging.Formatter):
    """A line for journald: its priority as a ``<N>`` prefix, no time stamp (journald stamps each line)."""

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in SYSLOG_PRIORITIES if record.levelno >= level), 7)
        return f"<{priority}>{super().format(record)}"


def setup_logging(verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    # $JOURNAL_STREAM is set when stderr goes to the journal
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter("%(levelname)s %(name)s: %(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, handlers=[handler])


def load(args: argparse.Namespace, **extra: Any) -> Config:
    from fer_edge.capture.sources import source_overrides
    from fer_edge.config import load_config

    overrides: dict = {}
    if getattr(args, "source", None):
        overrides.update(source_overrides(args.source))
    if getattr(args, "model", None):
        overrides["model.path"] = args.model
    if getattr(args, "output", None):
        overrides["recording.output_dir"] = args.output
    if getattr(args, "realtime", False):
        overrides["source.realtime"] = True
    if getattr(args, "no_record", False):
        overrides["recording.enabled"] = False
        overrides["events.enabled"] = False
    if getattr(args, "wait_for_camera", False):
        overrides["source.wait_at_start"] = True
    overrides.update(extra)
    cfg = load_config(args.config, overrides)
    if not args.verbose:
        logging.getLogger().setLevel(cfg.logging.level)
    return cfg


def preflight(cfg: Config, model_optional: bool = False) -> Path | None:
    """``check-config``'s view of what ``run`` refuses at start-up, without opening a camera: the live view's
    and MQTT's (``config.preflight.serve_secrets``, as ``run`` calls it, but a web port the running fer-edge
    holds is only a note), a recordings folder that takes files,
    then the checks ``app.build_pipeline`` makes, through the same functions and in its order: the classifier
    (``app.build_classifier``: the sidecar and its checksum, then the model loaded in the runtime and
    compared with the sidecar, some 30 ms), the Haar cascade (``app.build_detector``: found and loaded, a
    few ms), a video file or image folder source (``open_source``, opened and closed again), and for the Pi
    camera that picamera2 is installed. ``run`` and ``bench`` need no separate call: building their pipeline
    raises the same errors. A camera (picamera2, OpenCV capture) is never opened here: it may be in use by the
    service.

    A missing model fails as it fails ``run``; with ``model_optional`` it is only a warning, so a config
    can be checked before its model is installed (deploy/install.sh --prefix does that); a model that is
    there must be sound. Returns the model path, or None when it is missing.
    """
    from fer_edge.app import build_classifier, build_detector
    from fer_edge.capture.sources import check_picamera2, open_source, resolve_kind
    from fer_edge.config import resolve_model_path
    from fer_edge.config.preflight import check_output_folder, serve_secrets
    from fer_edge.record.recorder import check_recording

    serve_secrets(cfg, service_may_hold=True)  # listen rules and port, secret and TLS files: run's own checks
    check_output_folder(cfg.recording, cfg.events.enabled)

    try:
        model = resolve_model_path(cfg.model.path)
        if not model.is_file():
            raise ModelError(missing_model(model))
    except ModelError as exc:
        if not model_optional:
            raise
        log.warning("%s (model not checked)", exc)
        model = None
    else:
        build_classifier(cfg)  # ContractError: sidecar, checksum; ModelError: unloadable, unlike its sidecar
    build_detector(cfg)
    size, fps = (cfg.source.width, cfg.source.height), cfg.source.fps
    kind = resolve_kind(cfg.source)
    if kind == "picamera2":
        check_picamera2(cfg.source)
    if kind in ("file", "images"):
        source = open_source(cfg.source)
        size, fps = source.size, source.fps
        source.close()
    check_recording(cfg.recording, size, fps)  # one frame encoded in memory; the disk floor against the disk
    return model


def cmd_run(args: argparse.Namespace) -> int:
    from fer_edge import app

    if args.max_frames is not None and args.max_frames <= 0:
        raise ConfigError(f"--max-frames: expected a positive integer, got {args.max_frames}")
    cfg = load(args)
    started = time.time()
    stats = app.run(cfg, args.max_frames)
    sys.stdout.write(run_summary(stats, cfg, started))
    return 0


def run_summary(stats: RunStats, cfg: Config, started: float | None = None) -> str:
    """What a run did, in a few lines: frames, faces, expressions seen, speed, where the output went (with the
    recordings finished since ``started``, a time.time())."""
    from fer_edge.types import UNSURE_LABEL

    seen = ", ".join(
        f"{'unsure' if label == UNSURE_LABEL else label} {count}" for label, count in stats.label_counts.most_common()
    )
    lines = [
        f"frames      {stats.frames} in {stats.elapsed:.1f} s ({stats.fps:.1f} fps)",
        f"faces       {stats.faces} in {stats.frames_with_faces} frames",
        f"expressions {seen or 'none'}",
    ]
    if cfg.recording.enabled or cfg.events.enabled:
        lines.append(f"output      {os.path.abspath(cfg.recording.output_dir)}")
    if cfg.recording.enabled and started is not None:
        output = pathlib.Path(cfg.recording.output_dir)
        made = sorted(p for p in output.glob("*.mp4") if p.stat().st_mtime >= started - 1) if output.is_dir() else []
        lines += [f"recording   {p.resolve()}" for p in made[-3:]]
        if len(made) > 3:
            lines.append(f"            (and {len(made) - 3} earlier ones)")
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _runtime_info_held_back() -> Iterator[None]:
    """Leave out the "INFO: ..." lines the TFLite runtime writes to file descriptor 2 from C++ (the XNNPACK
    delegate's), which logging levels cannot reach; everything else written meanwhile is passed on."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            lines = held.read().decode(errors="replace").splitlines(True)
            sys.stderr.write("".join(line for line in lines if not line.startswith("INFO: ")))


def cmd_check_config(args: argparse.Namespace) -> int:
    import dataclasses

    from fer_edge.config import to_yaml

    cfg = load(args)
    if args.quiet and not args.verbose:
        logging.getLogger().setLevel(max(logging.WARNING, logging.getLogger().level))
        with _runtime_info_held_back():
            model = preflight(cfg, args.model_optional)
    else:
        model = preflight(cfg, args.model_optional)
    if model is not None:
        cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, path=str(model)))
    if not args.quiet:
        if isinstance(cfg.source.device, str):  # a stream URL's password is shown only in the file itself
            source = dataclasses.replace(cfg.source, device=mask_credentials(cfg.source.device))
            cfg = dataclasses.replace(cfg, source=source)
        sys.stdout.write(to_yaml(cfg))
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from fer_edge.analysis import bench

    if args.frames <= 0:
        raise ConfigError(f"--frames: expected a positive integer, got {args.frames}")
    cfg = load(args, **{"model.threads": 1})
    result = bench.run_bench(cfg, args.frames)
    sys.stdout.write(bench.format_json(result) if args.json else bench.format_table(result))
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from fer_edge.analysis import report

    for path in report.main(args.events, args.output):
        print(path)
    return 0


COMMANDS = {"run": cmd_run, "check-config": cmd_check_config, "bench": cmd_bench, "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        return COMMANDS[args.command](args)
    except FerEdgeError as exc:
        return _fail(args, exc, exc.exit_code)
    except (ContractError, OSError) as exc:  # model contract; disk full, permissions
        return _fail(args, exc, 1)
    except KeyboardInterrupt:
        return 130


def _fail(args: argparse.Namespace, exc: BaseException, code: int) -> int:
    if args.verbose:
        log.exception("%s", exc)
    message = " ".join(str(exc).split()) or type(exc).__name__
    priority = "<3>" if os.environ.get("JOURNAL_STREAM") else ""
    print(f"{priority}fer-edge: error: {message}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
